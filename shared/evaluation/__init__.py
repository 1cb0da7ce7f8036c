"""d2align.evaluation."""
