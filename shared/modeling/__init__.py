"""d2align.modeling."""
