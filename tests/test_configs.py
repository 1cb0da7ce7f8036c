"""Every shipped YAML merges with its project's keys; the shapes baselines match the dataset."""
from pathlib import Path

import pytest

from d2align.engine import build_config
from d2align.projects import config_hooks_for

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/**/*.yaml")) + sorted(ROOT.glob("projects/*/configs/**/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_merges(path):
    cfg = build_config(str(path), config_hooks=config_hooks_for(str(path)))
    assert cfg.MODEL.META_ARCHITECTURE
    assert cfg.DATASETS.TRAIN  # (a standalone IoU-Net config has no test set of its own)


def test_baselines_match_embedded_classes():
    from d2align.data.synthetic import CLASS_NAMES

    for path in sorted(ROOT.glob("configs/shapes/*.yaml")):
        cfg = build_config(str(path))
        key = "RETINANET" if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else "ROI_HEADS"
        assert cfg.MODEL[key].NUM_CLASSES == len(CLASS_NAMES), path.name
