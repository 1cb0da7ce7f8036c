"""d2align.engine."""
