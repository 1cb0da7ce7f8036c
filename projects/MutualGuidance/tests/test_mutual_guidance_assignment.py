"""Tests of Mutual Guidance's label assignment (mutual_guidance.assignment) on boxes."""

import itertools
import math

import pytest
import torch

from d2align.projects.mutual_guidance import ASSIGNMENTS, assign_anchors, iou_amplified

K = 3  # classes; label K is background
GT = torch.tensor([[0.0, 0.0, 100.0, 100.0]])


def _strips(ious):
    """Boxes [0, 0, 100, 100 * iou] inside GT: their IoU with GT is exactly `iou`."""
    h = 100.0 * torch.tensor(ious)
    return torch.stack([torch.zeros_like(h), torch.zeros_like(h), torch.full_like(h, 100.0), h], 1)


def _random_boxes(n, size=120.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = 6.0 + torch.rand(n, 2, generator=g) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


def _assign(assignment, anchors, gt_boxes, gt_classes, pred_boxes=None, pred_scores=None):
    if pred_boxes is None:
        pred_boxes = anchors
    if pred_scores is None:
        pred_scores = torch.zeros(len(anchors), K)
    return assign_anchors(
        anchors,
        gt_boxes,
        gt_classes,
        pred_boxes,
        pred_scores,
        num_classes=K,
        assignment=assignment,
    )


def test_boat_localize_to_classify():
    """Fig. 2: N_p = 6, N_i = 3 from IoU_anchor; IoU_regressed picks exactly 6 + 3 anchors."""
    iou_anchor = [0.80, 0.75, 0.70, 0.65, 0.60, 0.55, 0.48, 0.45, 0.42, 0.35, 0.30, 0.20, 0.10]
    iou_regressed = [0.85, 0.70, 0.90, 0.62, 0.66, 0.15, 0.50, 0.93, 0.55, 0.52, 0.40, 0.45, 0.05]
    anchors, pred_boxes = _strips(iou_anchor), _strips(iou_regressed)
    gt_classes = torch.tensor([1])
    static, _, static_reg = _assign("static", anchors, GT, gt_classes)
    assert (static == 1).sum() == 6 and (static == -1).sum() == 3 and static_reg.sum() == 6
    labels, matched, reg_mask = _assign("localize_to_classify", anchors, GT, gt_classes, pred_boxes)
    assert (labels == 1).nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 7]
    assert (labels == -1).nonzero().flatten().tolist() == [6, 8, 9]
    assert ((labels == K).sum()) == 4 and labels[5] == K  # anchor F: negative
    assert torch.equal(reg_mask, static_reg)  # regression stays static


def test_classify_to_localize_promotes_confident_anchor():
    # anchor 3 (IoU 0.45) with p = 0.9: 0.45 ** 0.55 = 0.644 > 0.55 (anchor 2, p = 0)
    anchors = _strips([0.8, 0.6, 0.55, 0.45, 0.2])
    scores = torch.zeros(5, K)
    scores[3, 2] = 0.9
    scores[2, 0] = 0.99  # a score of another class does not count
    labels, matched, reg_mask = _assign(
        "classify_to_localize", anchors, GT, torch.tensor([2]), pred_scores=scores
    )
    assert reg_mask.tolist() == [True, True, False, True, False]
    assert labels.tolist() == [2, 2, 2, -1, K]  # classification stays static
    labels, _, reg_mask = _assign(
        "mutual_guidance", anchors, GT, torch.tensor([2]), pred_scores=scores
    )
    assert reg_mask.tolist() == [True, True, False, True, False]


@pytest.mark.parametrize("seed", [0, 1])
def test_identity_predictions_reduce_to_static(seed):
    """Regressed box = anchor and every score 0: every rule is the static assignment."""
    anchors = _random_boxes(500, seed=seed)
    gt_boxes = _random_boxes(5, seed=seed + 7)
    gt_classes = torch.tensor([0, 2, 1, 2, 0])
    static = _assign("static", anchors, gt_boxes, gt_classes)
    assert (static[0] == -1).any() and static[2].sum() >= 5
    for assignment in ASSIGNMENTS[1:]:
        labels, matched, reg_mask = _assign(assignment, anchors, gt_boxes, gt_classes)
        assert torch.equal(labels, static[0]), assignment
        assert torch.equal(reg_mask, static[2]), assignment
        assert torch.equal(matched[reg_mask], static[1][reg_mask]), assignment


def test_iou_amplified_formula():
    ious = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    scores = [0.0, 0.2, 0.5, 0.8, 1.0]
    for sigma in (1.5, 2.0, 3.0):
        grid = torch.tensor(list(itertools.product(ious, scores)), dtype=torch.float64)
        out = iou_amplified(grid[:, 0], grid[:, 1], sigma)
        expected = [iou ** ((sigma - p) / sigma) for iou, p in grid.tolist()]
        assert out.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert (out >= grid[:, 0]).all()
        at_zero = grid[:, 1] == 0
        assert torch.equal(out[at_zero], grid[at_zero, 0])
    assert iou_amplified(torch.tensor(0.25), torch.tensor(1.0), 2.0).item() == pytest.approx(0.5)
    assert math.isclose(
        iou_amplified(torch.tensor(0.5), torch.tensor(0.9), 1e3).item(), 0.5, rel_tol=1e-3
    )  # large sigma: no amplification
    with pytest.raises(ValueError, match="SIGMA"):
        iou_amplified(torch.tensor(0.5), torch.tensor(0.5), 1.0)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_zero_gt(assignment):
    anchors = _random_boxes(50)
    labels, matched, reg_mask = _assign(
        assignment, anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    )
    assert labels.tolist() == [K] * 50 and not reg_mask.any() and matched.shape == (50,)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_gt_smaller_than_every_anchor(assignment):
    """A 4x4 GT among 32x32 anchors: no IoU >= 0.4, so N_p = 1 (its best anchor), N_i = 0."""
    xs = torch.arange(0, 192, 16.0)
    anchors = torch.stack([xs, torch.zeros_like(xs), xs + 32, torch.full_like(xs, 32)], 1)
    gt = torch.tensor([[10.0, 10.0, 14.0, 14.0]])
    scores = torch.rand(len(anchors), K, generator=torch.Generator().manual_seed(0))
    labels, matched, reg_mask = _assign(
        assignment, anchors, gt, torch.tensor([1]), anchors + 1.0, scores
    )
    assert (labels == 1).sum() == 1 and (labels == -1).sum() == 0 and reg_mask.sum() == 1
    assert matched[reg_mask].tolist() == [0]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_two_gts_competing_for_one_anchor(assignment):
    """Two GTs whose only overlapping anchor is the same: it goes to the GT it overlaps most
    (for the rule's quality); the other GT gets no anchor."""
    anchors = torch.tensor([[0.0, 0.0, 40.0, 40.0], [200.0, 200.0, 240.0, 240.0]])
    gts = torch.tensor([[0.0, 0.0, 20.0, 40.0], [0.0, 0.0, 40.0, 15.0]])  # IoU 0.5 and 0.375
    labels, matched, reg_mask = _assign(assignment, anchors, gts, torch.tensor([0, 2]))
    assert labels.tolist() == [0, K] and reg_mask.tolist() == [True, False]
    assert matched[0] == 0


def test_fig4_drawing_colours():
    import numpy as np

    from d2align.projects.mutual_guidance.visualize import COLORS, draw_difference

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    anchors = torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0], [8, 40, 20, 60]])
    static = torch.tensor([True, False, True])
    guided = torch.tensor([False, True, True])
    out = draw_difference(image, torch.zeros(0, 4), anchors, static, guided, "classify_to_localize")
    assert tuple(out[4, 12]) == COLORS["static"]  # top edge of the static-only anchor
    assert tuple(out[30, 40]) == COLORS["classify_to_localize"]  # guided-only anchor
    assert tuple(out[40, 14]) == (0, 0, 0)  # positive for both: not drawn
    assert image.max() == 0  # the input is not modified
