"""Every shipped YAML merges with its project's keys into a config that says what the file says,
names registered components and builds a model; leaves write to distinct output folders; the
shapes baselines match the dataset."""

from pathlib import Path

import pytest
import yaml
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY

from d2align.engine import build_config
from d2align.projects import config_hooks_for

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/shapes/*.yaml")) + sorted(
    ROOT.glob("projects/*/configs/**/*.yaml")
)
CONFIGS += [ROOT / "configs" / name for name in ("Base-RCNN-FPN.yaml", "Base-RetinaNet.yaml")]


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _load(path: Path):
    return build_config(str(path), config_hooks=config_hooks_for(str(path)))


def _flatten(node: dict, prefix: str = ""):
    """(dotted key, value) of every leaf of a YAML mapping."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _lookup(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _bases(path: Path) -> set:
    base = (yaml.safe_load(path.read_text()) or {}).get("_BASE_")
    return {(path.parent / base).resolve()} if base else set()


def _is_leaf(path: Path) -> bool:
    """A file that no other shipped file takes as its `_BASE_`."""
    return not any(path.resolve() in _bases(other) for other in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=_ids)
def test_config_merges_to_what_the_file_says(path):
    """Each key the file itself sets holds the file's value after merging (so no base or hook
    overrides it silently), and the components it names are registered."""
    cfg = _load(path)
    own = yaml.safe_load(path.read_text()) or {}
    own.pop("_BASE_", None)
    assert own, f"{path.name} sets nothing of its own"
    for key, value in _flatten(own):
        merged, value = _lookup(cfg, key), CfgNode._decode_cfg_value(value)  # as yacs reads it
        if isinstance(value, (list, tuple)):
            merged, value = list(merged), list(value)
        assert merged == value, f"{key}: file says {value!r}, merged config has {merged!r}"
    assert cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY
    if "RCNN" in cfg.MODEL.META_ARCHITECTURE:
        assert cfg.MODEL.ROI_HEADS.NAME in ROI_HEADS_REGISTRY
    assert cfg.DATASETS.TRAIN  # (a standalone IoU-Net config has no test set of its own)


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if "shapes" in p.parts and _is_leaf(p)], ids=_ids
)
def test_shapes_config_builds_a_model(path):
    """The model of every CPU config builds (so every name it uses resolves) with a head per
    class of the embedded dataset."""
    from d2align.data.synthetic import CLASS_NAMES

    cfg = _load(path)
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 1e6
    key = "RETINANET" if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE else "ROI_HEADS"
    assert cfg.MODEL[key].NUM_CLASSES == len(CLASS_NAMES), path.name


def test_leaf_configs_write_distinct_output_folders():
    """Two configs with one OUTPUT_DIR would overwrite each other's checkpoints and results."""
    seen = {}
    for path in filter(_is_leaf, CONFIGS):
        out = _load(path).OUTPUT_DIR
        assert out not in seen, f"{_ids(path)} and {seen[out]} both write {out}"
        seen[out] = _ids(path)
    assert len(seen) > 10
