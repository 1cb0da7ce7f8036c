"""IoU-Net configs: every YAML merges, the CPU ones build, and bad values are refused with a
message naming the key."""

import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

from d2align.engine import build_config
from d2align.projects.iou_net import (
    IoUNetPostProcessor,
    IoUNetROIHeads,
    StandaloneIoUNet,
    add_iou_net_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
CONFIG_DIR = os.path.join(ROOT, "projects", "IoUNet", "configs")
ALL = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))
SHAPES = [c for c in ALL if os.sep + "shapes" + os.sep in c]
FULL = os.path.join(CONFIG_DIR, "shapes", "iounet_iounms_refine_R18_FPN_scratch.yaml")


def _cfg(path=FULL, opts=()):
    return build_config(path, list(opts), [add_iou_net_config])


@pytest.mark.parametrize("path", ALL, ids=os.path.basename)
def test_every_config_merges(path):
    cfg = _cfg(path)
    assert cfg.MODEL.IOU_NET.NMS_TYPE in ("standard", "soft_linear", "iou_guided")


def test_paper_defaults_of_the_full_method():
    cfg = _cfg(os.path.join(CONFIG_DIR, "iounet_R_50_FPN_160k.yaml"))
    c = cfg.MODEL.IOU_NET
    assert (c.NMS_TYPE, c.REFINE.ENABLED, c.REFINE.TOPK, c.REFINE.MAX_ITERS) == (
        "iou_guided",
        True,
        100,
        5,
    )
    assert (c.REFINE.STEP_SIZE, c.REFINE.OMEGA1, c.REFINE.OMEGA2) == (0.5, 0.001, -0.01)
    assert c.JITTER.MIN_IOU == 0.5 and cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "PrRoIPool"
    s = cfg.SOLVER
    assert (s.MAX_ITER, s.STEPS, s.BASE_LR, s.BASE_LR * s.WARMUP_FACTOR) == (
        160000,
        (120000,),
        0.01,
        pytest.approx(0.004),
    )
    assert (cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, s.IMS_PER_BATCH) == (
        (800,),
        1200,
        16,
    )


@pytest.mark.parametrize("path", SHAPES, ids=os.path.basename)
def test_cpu_configs_build(path):
    model = build_model(_cfg(path))
    if isinstance(model, StandaloneIoUNet):
        assert model.postprocessor.nms_type == "iou_guided"
    elif "fpn_" in os.path.basename(path):
        assert not hasattr(model.roi_heads, "iou_branch")
    else:
        assert isinstance(model.roi_heads, IoUNetROIHeads)
        head = model.roi_heads.iou_branch.head
        assert head.iou_pred.out_features == model.roi_heads.num_classes  # class-aware


@pytest.mark.parametrize(
    "key, value",
    [
        ("MODEL.IOU_NET.NMS_TYPE", "greedy"),
        ("MODEL.IOU_NET.REFINE.STEP_SIZE", "0.0"),
        ("MODEL.IOU_NET.REFINE.STEP_SIZE", "-0.5"),
        ("MODEL.IOU_NET.REFINE.OMEGA2", "0.01"),
        ("MODEL.IOU_NET.REFINE.MAX_ITERS", "0"),
        ("MODEL.IOU_NET.NMS_THRESH", "1.5"),
        ("MODEL.IOU_NET.SOFT_NMS_SCORE_THRESH", "-0.001"),
        ("MODEL.IOU_NET.REFINE.TOPK", "0"),
    ],
)
def test_bad_inference_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        IoUNetPostProcessor(_cfg(opts=[key, value]))


def test_bad_values_fail_when_the_model_is_built():
    with pytest.raises(ValueError, match=r"MODEL\.IOU_NET\.NMS_TYPE = 'greedy'"):
        build_model(_cfg(opts=["MODEL.IOU_NET.NMS_TYPE", "greedy"]))
    with pytest.raises(ValueError, match=r"MODEL\.IOU_NET\.NUM_JITTER_SAMPLES"):
        build_model(_cfg(opts=["MODEL.IOU_NET.NUM_JITTER_SAMPLES", "0"]))
    # refinement needs gradients w.r.t. the box: ROIAlign has none
    with pytest.raises(ValueError, match=r"MODEL\.IOU_NET\.POOLER_TYPE"):
        build_model(_cfg(opts=["MODEL.IOU_NET.POOLER_TYPE", "ROIAlignV2"]))
    with pytest.raises(ValueError, match="nms_type"):
        IoUNetPostProcessor(nms_type="soft")


def test_bad_iou_branch_values_name_the_key():
    with pytest.raises(ValueError, match=r"MODEL\.IOU_NET\.IN_FEATURES = \['p2', 'p7'\]"):
        build_model(_cfg(opts=["MODEL.IOU_NET.IN_FEATURES", "['p2', 'p7']"]))
    with pytest.raises(ValueError, match=r"MODEL\.IOU_NET\.IOU_LOSS_TYPE = 'huber'"):
        build_model(_cfg(opts=["MODEL.IOU_NET.IOU_LOSS_TYPE", "huber"]))
    with pytest.raises(ValueError, match=r"MODEL\.ROI_IOU_HEAD\.NAME = 'MaskIoUHead'"):
        build_model(_cfg(opts=["MODEL.ROI_IOU_HEAD.NAME", "MaskIoUHead"]))


def test_iou_head_keys_are_the_shared_node_with_the_papers_values():
    cfg = _cfg(os.path.join(CONFIG_DIR, "iounet_R_50_FPN_160k.yaml"))
    h = cfg.MODEL.ROI_IOU_HEAD
    assert (h.NAME, h.FC_DIMS, h.FC_INIT_STD, h.PRED_INIT_STD, h.CLS_AGNOSTIC) == (
        "FCIoUHead",
        [1024, 1024],
        0.01,
        0.001,
        False,
    )
    assert (cfg.MODEL.IOU_NET.IOU_LOSS_TYPE, cfg.MODEL.IOU_NET.IOU_LOSS_BETA) == ("smooth_l1", 1.0)
    assert "FC_DIMS" not in cfg.MODEL.IOU_NET


def test_roialign_iou_branch_without_refinement_predicts():
    opts = ["MODEL.IOU_NET.POOLER_TYPE", "ROIAlignV2", "MODEL.IOU_NET.REFINE.ENABLED", "False"]
    model = build_model(_cfg(opts=opts))
    branch = model.roi_heads.iou_branch
    channels = model.backbone.output_shape()["p2"].channels
    sizes = {"p2": 64, "p3": 32, "p4": 16, "p5": 8}
    features = {f: torch.randn(1, channels, s, s) for f, s in sizes.items()}
    iou_fn = branch.iou_fn_of_image(features, 0)
    iou = iou_fn(torch.tensor([[4.0, 4.0, 40.0, 50.0]]), torch.tensor([3]))
    assert iou.shape == (1,) and torch.isfinite(iou).all()
