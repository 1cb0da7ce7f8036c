"""The quick mode of a suite: every run of the suite, end to end, in a few minutes on a CPU.

A small version of the embedded shapes dataset (32 train / 16 val images of 128 px, made once
under `$D2ALIGN_DATASETS/shapes_quick`), 20 iterations of batch 2, 128 px input. It exercises
everything a full suite does (trainings, evaluation, diagnostics, table, figures) and is
labelled as what it is: its numbers say nothing about the methods.
"""

from pathlib import Path
from typing import Tuple

from d2align.data import ShapesSpec, default_shapes_root, ensure_shapes_split

__all__ = ["QUICK_ITERS", "QUICK_SIZE", "QUICK_SPEC", "quick_label", "quick_opts"]

QUICK_SIZE = 128
QUICK_ITERS = 20
QUICK_SPEC = ShapesSpec(
    image_size=QUICK_SIZE, num_train=32, num_val=16, object_size=(12.0, QUICK_SIZE * 0.9)
)


def quick_opts() -> Tuple[str, ...]:
    """Overrides that shrink any shapes config to the quick mode (generating its data if
    needed); applied before the suite's and the command line's own."""
    root = Path(default_shapes_root()).with_name("shapes_quick")
    train_json, train_images = ensure_shapes_split("train", str(root), QUICK_SPEC, num_workers=1)
    test_json, test_images = ensure_shapes_split("val", str(root), QUICK_SPEC, num_workers=1)
    size = str(QUICK_SIZE)
    return (
        "D2ALIGN.DATA.TRAIN_JSON", train_json, "D2ALIGN.DATA.TRAIN_IMAGES", train_images,
        "D2ALIGN.DATA.TEST_JSON", test_json, "D2ALIGN.DATA.TEST_IMAGES", test_images,
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", size,
        "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size,
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(QUICK_ITERS),
        "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", str(QUICK_ITERS), "DATALOADER.NUM_WORKERS", "0",
        "TEST.EVAL_PERIOD", "0",
    )  # fmt: skip


def quick_label(max_iters) -> str:
    """The line that marks a quick table, with the iterations the runs really used."""
    iters = "/".join(str(i) for i in sorted(set(max_iters))) or str(QUICK_ITERS)
    return (
        f"QUICK smoke run: {iters} iterations of batch 2 at {QUICK_SIZE} px on "
        f"{QUICK_SPEC.num_train} train / {QUICK_SPEC.num_val} val images of the embedded shapes "
        "data. It checks the whole pipeline; its numbers say nothing about the methods (run "
        "without --quick for those)."
    )
