"""Helpers for tests and benchmarks: a tiny shapes dataset and a CPU-sized training config."""

import os
from typing import Iterable, Sequence, Tuple

from detectron2.config import CfgNode

from .data.datasets import register_coco_instances_checked
from .data.synthetic import ShapesSpec, generate_split
from .engine import build_config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))  # checkout


def register_tiny_shapes(
    root: str,
    num_train: int = 8,
    num_val: int = 4,
    image_size: int = 128,
    seed: int = 0,
    prefix: str = "d2align_tiny",
    **spec_kwargs,
) -> Tuple[str, str]:
    """Generate a tiny shapes dataset under `root` (no progress bar) and register its splits.

    Returns:
        (train dataset name, val dataset name): `<prefix>_train`, `<prefix>_val`.
    """
    spec = ShapesSpec(
        image_size=image_size,
        num_train=num_train,
        num_val=num_val,
        object_size=(12.0, image_size * 0.8),
        seed=seed,
        **spec_kwargs,
    )
    names = []
    for split in ("train", "val"):
        json_file = generate_split(spec, split, root, num_workers=1, progress=False)
        name = f"{prefix}_{split}"
        register_coco_instances_checked(name, json_file, os.path.join(root, split))
        names.append(name)
    return names[0], names[1]


def tiny_training_config(
    config_file: str,
    output_dir: str,
    datasets: Tuple[str, str],
    max_iter: int = 10,
    image_size: int = 128,
    opts: Sequence[str] = (),
    config_hooks: Iterable = (),
) -> CfgNode:
    """A config from `config_file` (relative to the repository root) shrunk for a CPU test:
    the given (train, test) datasets, small images, batch 2, no workers, `max_iter` iterations.
    """
    shrink = [
        "DATASETS.TRAIN",
        f"('{datasets[0]}',)",
        "DATASETS.TEST",
        f"('{datasets[1]}',)",
        "INPUT.MIN_SIZE_TRAIN",
        f"({image_size},)",
        "INPUT.MAX_SIZE_TRAIN",
        str(image_size),
        "INPUT.MIN_SIZE_TEST",
        str(image_size),
        "INPUT.MAX_SIZE_TEST",
        str(image_size),
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.STEPS",
        "()",
        "SOLVER.CHECKPOINT_PERIOD",
        str(10**6),
        "DATALOADER.NUM_WORKERS",
        "0",
        "TEST.EVAL_PERIOD",
        "0",
        "MODEL.DEVICE",
        "cpu",
        "OUTPUT_DIR",
        output_dir,
    ]
    return build_config(os.path.join(ROOT, config_file), shrink + list(opts), config_hooks)
