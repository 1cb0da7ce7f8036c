"""The shared localization-quality (IoU) head: its registry and config, its training boxes from
proposals, and the IoU-prediction loss of each type, on hand-worked values."""

import pytest
import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from torch import nn

from d2align.engine import build_config
from d2align.modeling import (
    ROI_IOU_HEAD_REGISTRY,
    FCIoUHead,
    build_iou_head,
    iou_prediction_loss,
    proposal_iou_training_boxes,
    select_class_iou,
)
from d2align.testing import ROOT

POOLED = ShapeSpec(channels=4, height=3, width=3)


@ROI_IOU_HEAD_REGISTRY.register()
class _ConstantIoUHead(nn.Module):
    """Predicts the same value for every box and class."""

    @configurable
    def __init__(self, *, num_classes: int, value: float):
        super().__init__()
        self.num_classes, self.value = num_classes, value

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {"num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES, "value": 0.25}

    def forward(self, x):
        return x.new_full((x.shape[0], self.num_classes), self.value)


def _cfg(opts=()):
    return build_config("", ["MODEL.ROI_HEADS.NUM_CLASSES", "3"] + list(opts))


# ---- loss: pred for boxes 0 / 1 of classes 1 / 2 is 0.4 / -1.5, targets 0 / 1: d = 0.4, -2.5
PRED = [[9.0, 0.4, -7.0], [3.0, 3.0, -1.5]]
CLASSES = torch.tensor([1, 2])
TARGETS = torch.tensor([0.0, 1.0])


@pytest.mark.parametrize(
    "loss_type, beta, value, grad",
    [
        # 0.5 * 0.4^2 = 0.08 and 2.5 - 0.5 = 2.0, mean 1.04; gradients d and sign(d), / 2
        ("smooth_l1", 1.0, 1.04, (0.2, -0.5)),
        # beta 0.5: 0.5 * 0.16 / 0.5 = 0.16 and 2.5 - 0.25 = 2.25, mean 1.205
        ("smooth_l1", 0.5, 1.205, (0.4, -0.5)),
        ("l1", 1.0, 1.45, (0.5, -0.5)),  # (0.4 + 2.5) / 2
        ("l2", 1.0, 3.205, (0.4, -2.5)),  # (0.16 + 6.25) / 2; gradient 2 d / 2
    ],
)
def test_iou_prediction_loss_hand_worked(loss_type, beta, value, grad):
    pred = torch.tensor(PRED, requires_grad=True)
    loss = iou_prediction_loss(pred, CLASSES, TARGETS, loss_type=loss_type, beta=beta)
    assert loss.item() == pytest.approx(value)
    loss.backward()
    # only each box's own class counts
    expected = torch.zeros(2, 3)
    expected[0, 1], expected[1, 2] = grad
    assert torch.allclose(pred.grad, expected)


def test_iou_prediction_loss_class_agnostic_empty_and_errors():
    agnostic = torch.tensor([[0.4], [-1.5]])
    assert iou_prediction_loss(agnostic, CLASSES, TARGETS, "l2").item() == pytest.approx(3.205)
    pred = torch.tensor(PRED, requires_grad=True)
    empty = iou_prediction_loss(pred[:0], CLASSES[:0], TARGETS[:0], "l2")
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="loss_type"):
        iou_prediction_loss(pred, CLASSES, TARGETS, "huber")
    with pytest.raises(ValueError, match="beta"):
        iou_prediction_loss(pred, CLASSES, TARGETS, beta=-1.0)
    assert torch.equal(select_class_iou(torch.tensor(PRED), CLASSES), agnostic[:, 0])
    assert torch.equal(select_class_iou(agnostic, CLASSES), agnostic[:, 0])
    with pytest.raises(ValueError, match="R = 2"):
        select_class_iou(torch.zeros(3, 3), CLASSES)


def test_build_iou_head_from_config():
    head = build_iou_head(_cfg(["MODEL.ROI_IOU_HEAD.FC_DIMS", "[8, 6, 5]"]), POOLED)
    assert isinstance(head, FCIoUHead)
    widths = [(m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)]
    assert widths == [(36, 8), (8, 6), (6, 5), (5, 3)]  # 4 x 3 x 3 in, one output per class
    agnostic = build_iou_head(_cfg(["MODEL.ROI_IOU_HEAD.CLS_AGNOSTIC", "True"]), POOLED)
    assert agnostic.iou_pred.out_features == 1
    assert agnostic(torch.randn(7, 4, 3, 3)).shape == (7, 1)
    # zero output weights and biases: every prediction is 0
    zero = build_iou_head(_cfg(["MODEL.ROI_IOU_HEAD.PRED_INIT_STD", "0.0"]), POOLED)
    assert torch.equal(zero(torch.randn(5, 4, 3, 3)), torch.zeros(5, 3))
    custom = build_iou_head(_cfg(["MODEL.ROI_IOU_HEAD.NAME", "_ConstantIoUHead"]), POOLED)
    assert isinstance(custom, _ConstantIoUHead)
    assert torch.equal(custom(torch.zeros(2, 4, 3, 3)), torch.full((2, 3), 0.25))


def test_iou_head_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"MODEL\.ROI_IOU_HEAD\.NAME = 'MaskIoUHead'"):
        build_iou_head(_cfg(["MODEL.ROI_IOU_HEAD.NAME", "MaskIoUHead"]), POOLED)
    with pytest.raises(ValueError, match=r"MODEL\.ROI_IOU_HEAD\.FC_DIMS = \[8, 0\]"):
        build_iou_head(_cfg(["MODEL.ROI_IOU_HEAD.FC_DIMS", "[8, 0]"]), POOLED)
    with pytest.raises(ValueError, match=r"MODEL\.ROI_IOU_HEAD\.FC_INIT_STD = -0\.1"):
        build_iou_head(_cfg(["MODEL.ROI_IOU_HEAD.FC_INIT_STD", "-0.1"]), POOLED)


def _sampled(boxes, gt_boxes, gt_classes, size=(40, 40)):
    props = Instances(size)
    props.proposal_boxes = Boxes(torch.tensor(boxes))
    props.gt_classes = torch.tensor(gt_classes)
    if gt_boxes is not None:
        props.gt_boxes = Boxes(torch.tensor(gt_boxes))
    return props


def test_proposal_iou_training_boxes_hand_worked():
    # K = 3; the second proposal is background (class 3), the third's GT is itself
    first = _sampled(
        [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [5.0, 5.0, 15.0, 15.0]],
        [[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 15.0, 15.0]],
        [0, 3, 2],
    )
    empty = _sampled([[1.0, 1.0, 9.0, 9.0]], None, [3])  # image without GT: no gt_boxes
    samples = proposal_iou_training_boxes([first, empty], num_classes=3)
    assert samples[0].proposal_boxes.tensor.tolist() == [[0, 0, 10, 10], [5, 5, 15, 15]]
    assert samples[0].gt_classes.tolist() == [0, 2]
    assert samples[0].gt_ious.tolist() == pytest.approx([0.5, 1.0])  # 100 / 200, 100 / 100
    assert len(samples[1]) == 0 and samples[1].image_size == (40, 40)

    # scoring regressed boxes instead (e.g. a cascade's final boxes): 150 / 200, 64 / 100
    regressed = torch.tensor(
        [[0.0, 0.0, 10.0, 15.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 13.0, 13.0]], requires_grad=True
    )
    scored, _ = proposal_iou_training_boxes([first, empty], 3, [regressed, torch.zeros(1, 4)])
    assert scored.gt_ious.tolist() == pytest.approx([0.75, 0.64])
    assert not scored.proposal_boxes.tensor.requires_grad and not scored.gt_ious.requires_grad
    with pytest.raises(ValueError, match=r"must be \(3, 4\)"):
        proposal_iou_training_boxes([first], 3, [regressed[:2]])


def test_proposal_iou_training_boxes_on_detectron2_sampled_proposals():
    cfg = build_config(
        f"{ROOT}/configs/shapes/faster_rcnn_R18_FPN_scratch.yaml",
        ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"],
    )
    shapes = {f"p{k}": ShapeSpec(channels=8, stride=2**k) for k in (2, 3, 4, 5)}
    heads = build_roi_heads(cfg, shapes).train()
    g = torch.Generator().manual_seed(0)
    gt = torch.tensor([[6.0, 8.0, 40.0, 44.0], [30.0, 20.0, 62.0, 50.0]])
    proposals = Instances((64, 64))
    # 30 boxes around each GT box, shifted by up to a few pixels
    proposals.proposal_boxes = Boxes((gt + 4 * torch.randn(30, 2, 4, generator=g)).view(60, 4))
    proposals.objectness_logits = torch.zeros(60)
    target = Instances((64, 64))
    target.gt_boxes, target.gt_classes = Boxes(gt), torch.tensor([1, 2])
    torch.manual_seed(0)
    with EventStorage():
        (sampled,) = heads.label_and_sample_proposals([proposals], [target])
    (samples,) = proposal_iou_training_boxes([sampled], num_classes=3)
    foreground = sampled.gt_classes < 3
    assert len(samples) == int(foreground.sum()) > 0
    # detectron2's matcher gives each foreground proposal its GT of highest IoU (>= 0.5)
    best = pairwise_iou(Boxes(gt), samples.proposal_boxes).max(dim=0)
    assert torch.allclose(samples.gt_ious, best.values, atol=1e-6)
    assert (samples.gt_ious >= 0.5).all()
    assert torch.equal(samples.gt_classes, target.gt_classes[best.indices])
