"""Tests of d2align.modeling.anchor_assignment: the static IoU_anchor rule, per-GT counts and
top-k-per-GT dynamic selection."""

import pytest
import torch
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou

from d2align.modeling.anchor_assignment import (
    anchor_owners,
    count_per_gt,
    static_iou_assignment,
    topk_per_gt_assignment,
)


def _random_boxes(n, size=100.0, min_side=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = min_side + torch.rand(n, 2, generator=g) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


def test_static_thresholds_and_best_anchor():
    # one GT, IoUs of 6 anchors: positive >= 0.5, ignored in [0.4, 0.5), negative < 0.4
    iou = torch.tensor([[0.7, 0.5, 0.45, 0.4, 0.39, 0.0]])
    matched, labels = static_iou_assignment(iou)
    assert labels.tolist() == [1, 1, -1, -1, 0, 0]
    assert matched.dtype == torch.int64 and labels.dtype == torch.int8
    # no anchor >= 0.5: the best anchor (both tied ones) is still positive
    iou = torch.tensor([[0.3, 0.45, 0.45, 0.1]])
    _, labels = static_iou_assignment(iou)
    assert labels.tolist() == [0, 1, 1, 0]


def test_static_matches_detectron2_matcher_when_no_conflict():
    anchors = _random_boxes(300, seed=1)
    gts = _random_boxes(4, seed=2)
    iou = pairwise_iou(Boxes(gts), Boxes(anchors))
    matched, labels = static_iou_assignment(iou)
    d2_matched, d2_labels = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(iou)
    # detectron2 matches a low-quality positive to its highest-IoU GT; without such conflicts
    # (checked here) both rules agree
    owner, claimed = anchor_owners(iou)
    no_conflict = ~claimed | (owner == iou.argmax(dim=0))
    assert no_conflict.all()
    assert torch.equal(labels, d2_labels)
    assert torch.equal(matched[labels == 1], d2_matched[labels == 1])


def test_static_zero_gt_and_zero_iou_gt():
    matched, labels = static_iou_assignment(torch.zeros(0, 5))
    assert labels.tolist() == [0] * 5 and matched.tolist() == [0] * 5
    # a GT overlapping no anchor claims nothing (detectron2's matcher would make all positive)
    _, labels = static_iou_assignment(torch.zeros(1, 5))
    assert labels.tolist() == [0] * 5


def test_two_gts_competing_for_one_anchor():
    # anchor 0 is the best anchor of GTs 0 and 1: it goes to GT 1 (higher IoU) and GT 0 is left
    # without positives. Anchor 2 is GT 2's best anchor (0.30) but overlaps GT 1 more (0.35):
    # it goes to its claimant GT 2 (detectron2's Matcher would match it to GT 1).
    iou = torch.tensor(
        [
            [0.30, 0.10, 0.00],
            [0.45, 0.20, 0.35],
            [0.00, 0.00, 0.30],
        ]
    )
    matched, labels = static_iou_assignment(iou)
    assert labels.tolist() == [1, 0, 1]
    assert matched[0] == 1 and matched[2] == 2
    num_pos, num_ignored = count_per_gt(matched, labels, 3)
    assert num_pos.tolist() == [0, 1, 1] and num_ignored.tolist() == [0, 0, 0]


def test_static_bad_thresholds():
    with pytest.raises(ValueError, match="thresholds"):
        static_iou_assignment(torch.rand(2, 3), 0.6, 0.5)


def test_counts_per_gt():
    matched = torch.tensor([0, 0, 1, 1, 1, 0, 2])
    labels = torch.tensor([1, -1, 1, 1, -1, 0, 0], dtype=torch.int8)
    num_pos, num_ignored = count_per_gt(matched, labels, 4)
    assert num_pos.tolist() == [1, 2, 0, 0] and num_ignored.tolist() == [1, 1, 0, 0]


def test_topk_boat_example():
    # Fig. 2: anchors A..M; the static rule gives N_p = 6 positives and N_i = 3 ignored.
    iou_anchor = torch.tensor(
        [[0.80, 0.75, 0.70, 0.65, 0.60, 0.55, 0.48, 0.45, 0.42, 0.35, 0.30, 0.20, 0.10]]
    )
    matched, labels = static_iou_assignment(iou_anchor)
    num_pos, num_ignored = count_per_gt(matched, labels, 1)
    assert (num_pos.item(), num_ignored.item()) == (6, 3)
    # IoU_regressed ranks anchor F (5) last but one and H (7) first: thresholds are the 6-th
    # and 9-th largest values, 0.62 and 0.50, not 0.5 / 0.4
    iou_regressed = torch.tensor(
        [[0.85, 0.70, 0.90, 0.62, 0.66, 0.15, 0.50, 0.93, 0.55, 0.52, 0.40, 0.45, 0.05]]
    )
    _, labels = topk_per_gt_assignment(iou_regressed, num_pos, num_ignored)
    assert (labels == 1).sum() == 6 and (labels == -1).sum() == 3
    positive = set((labels == 1).nonzero().flatten().tolist())
    ignored = set((labels == -1).nonzero().flatten().tolist())
    assert positive == {7, 2, 0, 1, 4, 3} and ignored == {8, 9, 6}
    assert labels[5] == 0  # F: large IoU_anchor, poorly regressed -> negative


def test_topk_ties_give_exact_counts_and_zero_quality_never_chosen():
    quality = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.0, 0.0]])
    _, labels = topk_per_gt_assignment(quality, torch.tensor([2]), torch.tensor([1]))
    assert (labels == 1).sum() == 2 and (labels == -1).sum() == 1
    # asks for 5 anchors but only 4 have positive quality
    _, labels = topk_per_gt_assignment(quality, torch.tensor([3]), torch.tensor([2]))
    assert (labels == 1).sum() == 3 and (labels == -1).sum() == 1 and (labels[4:] == 0).all()


def test_topk_each_anchor_to_one_gt():
    # both GTs rank anchor 1 first: it goes to GT 1 (higher quality); GT 0 takes anchors 0, 2
    quality = torch.tensor([[0.6, 0.7, 0.5, 0.1], [0.2, 0.9, 0.3, 0.4]])
    matched, labels = topk_per_gt_assignment(quality, torch.tensor([2, 1]), torch.tensor([0, 1]))
    assert labels.tolist() == [1, 1, 1, -1]
    assert matched[:2].tolist() == [0, 1] and matched[2] == 0 and matched[3] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_on_iou_anchor_reduces_to_static(seed):
    """With quality = IoU_anchor and the static counts, the dynamic rule is the static rule."""
    anchors = _random_boxes(400, seed=seed)
    gts = _random_boxes(6, seed=seed + 10)
    iou = pairwise_iou(Boxes(gts), Boxes(anchors))
    matched, labels = static_iou_assignment(iou)
    num_pos, num_ignored = count_per_gt(matched, labels, len(gts))
    assert num_pos.sum() > 0 and num_ignored.sum() > 0
    dyn_matched, dyn_labels = topk_per_gt_assignment(iou, num_pos, num_ignored)
    assert torch.equal(dyn_labels, labels)
    assigned = labels != 0
    assert torch.equal(dyn_matched[assigned], matched[assigned])


def test_topk_zero_gt_and_bad_counts():
    matched, labels = topk_per_gt_assignment(
        torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), None
    )
    assert labels.tolist() == [0] * 4
    with pytest.raises(ValueError, match="one count per ground truth"):
        topk_per_gt_assignment(torch.rand(2, 4), torch.tensor([1, 1, 1]))
