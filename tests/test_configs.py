"""Every shipped YAML merges with its project's keys, and builds a model when small enough."""
import importlib
from pathlib import Path

import pytest

from d2align.engine import build_config

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {
    "IoUNet": "iou_net",
    "MutualGuidance": "mutual_guidance",
    "CPMRCNN": "cpm_rcnn",
    "OffsetBin": "offset_bin",
    "DCLoss": "dc_loss",
}
CONFIGS = sorted(ROOT.glob("configs/**/*.yaml")) + sorted(ROOT.glob("projects/*/configs/**/*.yaml"))


def config_hooks_for(path: Path):
    parts = path.relative_to(ROOT).parts
    if parts[0] != "projects":
        return []
    name = PROJECT_PACKAGES[parts[1]]
    module = importlib.import_module(f"d2align.projects.{name}")
    return [getattr(module, f"add_{name}_config")]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_merges(path):
    cfg = build_config(str(path), config_hooks=config_hooks_for(path))
    assert cfg.MODEL.META_ARCHITECTURE
    assert cfg.DATASETS.TRAIN  # (a standalone IoU-Net config has no test set of its own)


def test_baselines_match_embedded_classes():
    from d2align.data.synthetic import CLASS_NAMES

    for path in sorted(ROOT.glob("configs/shapes/*.yaml")):
        cfg = build_config(str(path))
        key = "RETINANET" if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else "ROI_HEADS"
        assert cfg.MODEL[key].NUM_CLASSES == len(CLASS_NAMES), path.name
