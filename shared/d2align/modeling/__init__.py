"""d2align.modeling: modeling pieces shared by the projects (ROI heads base, inference)."""
from .roi_heads_base import D2AlignStandardROIHeads, per_class_candidates

__all__ = ["D2AlignStandardROIHeads", "per_class_candidates"]
