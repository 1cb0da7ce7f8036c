"""One NMS surface: the same NMS keys under every node that has them (`add_nms_keys`), one
parser (`nms_settings_from_config`, refusing types a detector cannot run) and one per-class
dispatcher (`per_class_nms`, "iou_guided" included) used by the two-stage heads, the
RetinaNet base and IoU-Net's post-processor."""

import pytest
import torch

from d2align.engine import build_config
from d2align.modeling import (
    NMS_TYPES,
    SCORE_NMS_TYPES,
    nms_settings_from_config,
    per_class_nms,
)
from d2align.ops import batched_iou_guided_nms
from d2align.projects.iou_net import add_iou_net_config

NMS_KEYS = {
    "NMS_TYPE",
    "SOFT_NMS_SIGMA",
    "SOFT_NMS_SCORE_THRESH",
    "CL_NMS_TEMPERATURE",
    "CL_NMS_DIS_SCALE",
    "CL_NMS_CENTER_WEIGHTS",
}


def test_every_node_has_the_same_nms_keys_and_defaults():
    cfg = build_config("", [], [add_iou_net_config])
    nodes = [cfg.MODEL.D2ALIGN_ROI_HEADS, cfg.MODEL.D2ALIGN_RETINANET, cfg.MODEL.IOU_NET]
    for node in nodes:
        assert NMS_KEYS <= set(node.keys())
    for key in NMS_KEYS - {"NMS_TYPE"}:
        assert len({node[key] for node in nodes}) == 1, key
    assert [n.NMS_TYPE for n in nodes] == ["standard", "standard", "iou_guided"]


def test_the_parser_refuses_a_type_the_detector_cannot_run():
    cfg = build_config("", ["MODEL.D2ALIGN_RETINANET.NMS_TYPE", "iou_guided"])
    with pytest.raises(ValueError, match=r"MODEL.D2ALIGN_RETINANET.NMS_TYPE = 'iou_guided'"):
        nms_settings_from_config(cfg.MODEL.D2ALIGN_RETINANET, "MODEL.D2ALIGN_RETINANET.",
                                 SCORE_NMS_TYPES)  # fmt: skip
    nms_type, kwargs = nms_settings_from_config(cfg.MODEL.D2ALIGN_RETINANET, "X.", NMS_TYPES)
    assert nms_type == "iou_guided" and set(kwargs) == {
        "soft_nms_sigma", "soft_nms_score_thresh", "cl_nms_temperature", "cl_nms_dis_scale",
        "cl_nms_center_weights",
    }  # fmt: skip


def test_iou_guided_through_the_dispatcher_is_the_op_ranked_by_its_new_score():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(60, 2, generator=g) * 40], dim=1)
    scores, loc = torch.rand(60, generator=g), torch.rand(60, generator=g)
    classes = torch.randint(3, (60,), generator=g)
    keep, new = per_class_nms(boxes, scores, classes, "iou_guided", 0.4, loc_scores=loc)
    ref_keep, ref_new = batched_iou_guided_nms(boxes, scores, loc, classes, 0.4)
    assert sorted(keep.tolist()) == sorted(ref_keep.tolist())
    assert (new[:-1] >= new[1:]).all()  # ranked by the reported (updated) score
    assert dict(zip(keep.tolist(), new.tolist())) == dict(zip(ref_keep.tolist(), ref_new.tolist()))
    with pytest.raises(ValueError, match="'iou_guided' needs loc_scores"):
        per_class_nms(boxes, scores, classes, "iou_guided", 0.4)
