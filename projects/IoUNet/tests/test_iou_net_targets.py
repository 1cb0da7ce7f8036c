"""IoU-Net training samples and loss (§3.1, §3.4) on hand-made inputs, through the shared
d2align.modeling pieces IoU-Net uses."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances

from d2align.modeling import (
    FCIoUHead,
    decode_iou,
    encode_iou,
    iou_prediction_loss,
    sample_iou_training_boxes,
)
from d2align.ops import build_roi_pooler
from d2align.projects.iou_net import IoUBranch
from d2align.structures import aligned_iou

JITTER = dict(
    min_iou=0.5, num_bins=10, scale_range=(0.5, 2.0), shift_range=0.3, aspect_range=(0.5, 2.0)
)


def _image(gt_boxes, classes, size=(120, 160)):
    target = Instances(size)
    target.gt_boxes = Boxes(torch.tensor(gt_boxes, dtype=torch.float32).view(-1, 4))
    target.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return target


def test_jittered_samples_have_iou_at_least_half_and_exact_targets():
    # one image with three objects (one touching the right/bottom border), one without any,
    # one whose only GT box is degenerate (zero width): it cannot be jittered
    targets = [
        _image([[10, 12, 60, 50], [40, 30, 110, 100], [120, 80, 160, 120]], [2, 0, 1]),
        _image([], []),
        _image([[30, 30, 30, 60]], [1]),
    ]
    generator = torch.Generator().manual_seed(0)
    samples = sample_iou_training_boxes(targets, 100, JITTER, generator)

    first = samples[0]
    assert len(first) == 100
    gt = targets[0].gt_boxes.tensor[first.gt_index]
    recomputed = aligned_iou(first.proposal_boxes.tensor, gt)
    assert torch.allclose(first.gt_ious, recomputed, atol=1e-6)
    assert (recomputed >= 0.5 - 1e-6).all()
    assert torch.equal(first.gt_classes, targets[0].gt_classes[first.gt_index])
    boxes = first.proposal_boxes.tensor  # clipped to the 120 x 160 image
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 160).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 120).all()
    # uniform over the IoU: each of the 10 bins of [0.5, 1] holds 10 samples
    counts = torch.histc(first.gt_ious, bins=10, min=0.5, max=1.0)
    assert counts.tolist() == [10.0] * 10
    # every object is used
    assert set(first.gt_index.tolist()) == {0, 1, 2}
    assert len(samples[1]) == 0 and len(samples[2]) == 0


def test_iou_normalisation_maps_sample_range_onto_minus_one_one():
    iou = torch.tensor([0.5, 0.625, 0.75, 1.0])
    assert torch.allclose(encode_iou(iou, 0.5), torch.tensor([-1.0, -0.5, 0.0, 1.0]))
    assert torch.allclose(decode_iou(encode_iou(iou, 0.5), 0.5), iou)
    assert torch.allclose(encode_iou(torch.tensor([0.6, 1.0]), 0.6), torch.tensor([-1.0, 1.0]))


def test_iou_loss_hand_worked():
    # box 0: class 1, IoU 0.75 -> target 0, prediction 0.4 -> 0.5 * 0.4^2 = 0.08
    # box 1: class 2, IoU 1.0  -> target 1, prediction -1.5 -> |d| = 2.5 -> 2.5 - 0.5 = 2.0
    # mean over the 2 boxes: 1.04; the other classes' outputs do not count
    pred = torch.tensor([[9.0, 0.4, -7.0], [3.0, 3.0, -1.5]], requires_grad=True)
    classes = torch.tensor([1, 2])
    targets = encode_iou(torch.tensor([0.75, 1.0]), 0.5)
    loss = iou_prediction_loss(pred, classes, targets, beta=1.0)
    assert loss.item() == pytest.approx(1.04)
    loss.backward()
    # d/dpred: box 0: d / 2 = 0.2; box 1: sign(d) / 2 = -0.5; zero elsewhere
    expected = torch.tensor([[0.0, 0.2, 0.0], [0.0, 0.0, -0.5]])
    assert torch.allclose(pred.grad, expected)
    # beta = 0 is the L1 loss: (0.4 + 2.5) / 2
    assert iou_prediction_loss(pred, classes, targets, beta=0.0).item() == pytest.approx(1.45)
    # no samples in the batch: 0, still connected to the graph
    empty = iou_prediction_loss(pred[:0], classes[:0], targets[:0], beta=1.0)
    assert empty.item() == 0.0 and empty.requires_grad


def test_iou_branch_loss_is_weighted_smooth_l1_of_its_predictions():
    torch.manual_seed(0)
    shape = {"p3": ShapeSpec(channels=4, stride=8)}
    head = FCIoUHead(ShapeSpec(channels=4, height=2, width=2), num_classes=3, fc_dims=[8])
    branch = IoUBranch(
        in_features=["p3"],
        pooler=build_roi_pooler(2, [1 / 8], 0, "PrRoIPool"),
        head=head,
        loss_weight=2.5,
        loss_beta=1.0,
        num_samples=20,
        jitter=JITTER,
    )
    features = {"p3": torch.randn(1, shape["p3"].channels, 15, 20)}
    targets = [_image([[10, 12, 60, 50], [40, 30, 110, 100]], [2, 0])]
    torch.manual_seed(1)
    loss = branch.losses(features, targets)["loss_iou"]
    # same samples again, scored by hand
    torch.manual_seed(1)
    (samples,) = sample_iou_training_boxes(targets, 20, JITTER)
    pred = head(branch.pooler([features["p3"]], [samples.proposal_boxes]))
    chosen = pred[torch.arange(len(samples)), samples.gt_classes]
    diff = (chosen - encode_iou(samples.gt_ious, 0.5)).abs()
    by_hand = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()
    assert loss.item() == pytest.approx(2.5 * by_hand.item(), rel=1e-5)
