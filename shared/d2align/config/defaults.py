"""`add_d2align_config`: the keys every d2align project has, under `D2ALIGN`.

A project's own keys live in its `add_<project>_config`, which calls this first.
"""
from detectron2.config import CfgNode as CN


def add_d2align_config(cfg: CN) -> None:
    """Add the shared d2align keys to `cfg` in place (idempotent)."""
    if "D2ALIGN" in cfg:
        return
    cfg.D2ALIGN = CN()
    # A user's own COCO-format data, with no code to write: when TRAIN_JSON / TEST_JSON are set,
    # they are registered as "d2align_custom_train" / "d2align_custom_test" (class names from
    # the JSON) and replace DATASETS.TRAIN / DATASETS.TEST.
    cfg.D2ALIGN.DATA = CN()
    cfg.D2ALIGN.DATA.TRAIN_JSON = ""
    cfg.D2ALIGN.DATA.TRAIN_IMAGES = ""
    cfg.D2ALIGN.DATA.TEST_JSON = ""
    cfg.D2ALIGN.DATA.TEST_IMAGES = ""
    # Write `final_results.json` (AP columns, train s/iter, inference s/image) into OUTPUT_DIR
    # after the last evaluation; read by tools/compare.py.
    cfg.D2ALIGN.WRITE_RESULTS = True
