"""L2RegressionOutputLayers (Table 2's L2 row): the squared error of the foreground deltas by
hand; everything else is detectron2's FastRCNNOutputLayers, equal on the same weights."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from d2align.modeling import build_box_predictor
from d2align.projects.offset_bin import L2RegressionOutputLayers, add_offset_bin_config


def _predictors(agnostic):
    cfg = get_cfg()
    add_offset_bin_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.ROI_BOX_HEAD.PREDICTOR", "L2RegressionOutputLayers",
            "MODEL.ROI_HEADS.NUM_CLASSES", "2",
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", str(agnostic),
            "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "(1.0, 1.0, 1.0, 1.0)",
        ]
    )  # fmt: skip
    l2 = build_box_predictor(cfg, ShapeSpec(channels=6))
    stock = FastRCNNOutputLayers(cfg, ShapeSpec(channels=6))
    stock.load_state_dict(l2.state_dict())
    return l2, stock


@pytest.mark.parametrize("agnostic", [True, False])
def test_l2_loss_by_hand_and_the_rest_is_detectron2s(agnostic):
    l2, stock = _predictors(agnostic)
    assert type(l2) is L2RegressionOutputLayers
    proposals = Instances((100, 100))
    proposals.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3))
    # deltas of the first (foreground) proposal's ground truth: (0.5, 0, log 2, log 2)
    proposals.gt_boxes = Boxes(torch.tensor([[0.0, -5.0, 20.0, 15.0]] * 3))
    proposals.gt_classes = torch.tensor([1, 2, 2])  # 2 = background
    deltas = torch.zeros(3, 4 if agnostic else 8)
    deltas[0, -4:] = torch.tensor([1.5, -1.0, 0.0, 2.0])  # the GT class's (last) columns
    scores = torch.randn(3, 3)
    with EventStorage():
        losses = l2.losses((scores, deltas), [proposals])
        reference = stock.losses((scores, deltas), [proposals])
    by_hand = (1.0**2 + 1.0**2 + math.log(2) ** 2 + (2.0 - math.log(2)) ** 2) / 3  # / R = 3
    assert losses["loss_box_reg"].item() == pytest.approx(by_hand, rel=1e-6)
    assert losses["loss_cls"].item() == reference["loss_cls"].item()
    features = torch.randn(3, 6)
    assert torch.equal(l2(features)[1], stock(features)[1])
    assert torch.equal(
        l2.predict_boxes((scores, deltas), [proposals])[0],
        stock.predict_boxes((scores, deltas), [proposals])[0],
    )
