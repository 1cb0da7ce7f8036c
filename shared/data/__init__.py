"""d2align.data."""
