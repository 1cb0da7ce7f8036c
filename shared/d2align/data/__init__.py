"""d2align.data: the embedded synthetic shapes dataset and checked COCO-format registration."""

from .datasets import (
    SHAPES_DATASETS,
    default_shapes_root,
    ensure_shapes_split,
    load_coco_json_checked,
    register_coco_instances_checked,
    register_shapes_datasets,
    validate_coco_dict,
)
from .synthetic import CLASS_NAMES, ShapesSpec, generate_split, render_sample, split_is_current

__all__ = [
    "CLASS_NAMES",
    "SHAPES_DATASETS",
    "ShapesSpec",
    "default_shapes_root",
    "ensure_shapes_split",
    "generate_split",
    "load_coco_json_checked",
    "register_coco_instances_checked",
    "register_shapes_datasets",
    "render_sample",
    "split_is_current",
    "validate_coco_dict",
]
