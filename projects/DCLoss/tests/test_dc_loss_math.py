"""DC Loss's pure functions: the dynamic coefficient (eq. 1-2) and IAC assignment (eq. 4-5)."""

import math

import pytest
import torch
from detectron2.structures import Boxes, pairwise_iou

from d2align.modeling.anchor_assignment import static_iou_assignment
from d2align.projects.dc_loss import (
    dynamic_coefficient,
    iac_assignment,
    iac_scores,
    normalize_coefficient,
)

EPS = 1e-6


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---- eq. 1 -----------------------------------------------------------------------------------


def test_perfect_box_has_the_largest_coefficient():
    target = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 7.0, 50.0, 9.0]])
    lam = dynamic_coefficient(target.clone(), target, EPS)
    torch.testing.assert_close(lam, torch.full((2,), 1.0 / (0.5 + EPS)))


def test_hand_worked_center_and_aspect_errors():
    target = torch.tensor([[0.0, 0.0, 10.0, 20.0]] * 3)  # w 10, h 20, centre (5, 10), w/h 0.5
    pred = torch.tensor(
        [
            [5.0, 0.0, 15.0, 20.0],  # centre moved by half a width: d^2 = 0.25, same aspect
            [0.0, 10.0, 10.0, 30.0],  # centre moved by half a height: d^2 = 0.25
            [-5.0, 0.0, 15.0, 20.0],  # same centre, w/h = 1: |1 - 0.5| = 0.5
        ]
    )
    want = torch.tensor(
        [
            1.0 / (_sigmoid(0.25) + EPS),
            1.0 / (_sigmoid(0.25) + EPS),
            1.0 / (0.5 + math.tanh(0.5) + EPS),
        ]
    )
    torch.testing.assert_close(dynamic_coefficient(pred, target, EPS), want)


def test_coefficient_falls_with_center_and_aspect_error():
    target = torch.tensor([[20.0, 20.0, 60.0, 40.0]]).expand(6, 4)
    shifts = torch.tensor([0.0, 2.0, 5.0, 10.0, 20.0, 40.0])
    moved = target + torch.stack([shifts, shifts * 0.5, shifts, shifts * 0.5], dim=1)
    lam = dynamic_coefficient(moved, target, EPS)
    assert (lam[1:] < lam[:-1]).all(), lam
    widths = torch.tensor([40.0, 44.0, 50.0, 60.0, 80.0, 120.0])  # w/h from 2 to 6, same centre
    stretched = torch.stack([40 - widths / 2, target[:, 1], 40 + widths / 2, target[:, 3]], 1)
    lam = dynamic_coefficient(stretched, target, EPS)
    assert (lam[1:] < lam[:-1]).all(), lam
    assert lam.min() > 1.0 / (2.0 + EPS)


def test_center_error_is_scale_invariant():
    target = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    pred = torch.tensor([[3.0, 4.0, 13.0, 24.0]])
    torch.testing.assert_close(
        dynamic_coefficient(pred, target), dynamic_coefficient(pred * 7.5, target * 7.5)
    )


def test_collapsed_prediction_gets_the_largest_aspect_penalty():
    target = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    flat = torch.tensor([[0.0, 10.0, 10.0, 10.0]])  # same centre, height 0
    want = torch.tensor([1.0 / (0.5 + 1.0 + EPS)])
    torch.testing.assert_close(dynamic_coefficient(flat, target, EPS), want)


def test_bad_boxes_are_refused():
    good = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    with pytest.raises(ValueError, match="positive width and height"):
        dynamic_coefficient(good, torch.tensor([[0.0, 0.0, 0.0, 20.0]]))
    with pytest.raises(ValueError, match=r"\(P, 4\)"):
        dynamic_coefficient(good, good[:, :3])
    with pytest.raises(ValueError, match="eps"):
        dynamic_coefficient(good, good, eps=-1.0)


def test_no_gradient_through_the_coefficient():
    pred = torch.tensor([[1.0, 2.0, 11.0, 19.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    lam = dynamic_coefficient(pred, target)
    losses = torch.tensor([0.3], requires_grad=True)
    normalized = normalize_coefficient(lam, losses)
    assert not lam.requires_grad and not normalized.requires_grad


# ---- eq. 2 -----------------------------------------------------------------------------------


def test_normalization_keeps_the_unweighted_sum():
    lam = torch.tensor([2.0, 1.0, 0.5])
    losses = torch.tensor([1.0, 2.0, 4.0])  # sum 7, weighted sum 6
    normalized = normalize_coefficient(lam, losses)
    torch.testing.assert_close(normalized, lam * 7.0 / 6.0)
    torch.testing.assert_close((normalized * losses).sum(), losses.sum())
    generator = torch.Generator().manual_seed(0)
    lam = 0.5 + 1.5 * torch.rand(50, generator=generator, dtype=torch.float64)
    losses = torch.rand(50, generator=generator, dtype=torch.float64)
    torch.testing.assert_close((normalize_coefficient(lam, losses) * losses).sum(), losses.sum())


def test_normalization_of_zero_losses_and_no_positive():
    lam = torch.tensor([2.0, 1.0])
    torch.testing.assert_close(normalize_coefficient(lam, torch.zeros(2)), lam)
    assert normalize_coefficient(torch.zeros(0), torch.zeros(0)).shape == (0,)


# ---- eq. 4-5 ---------------------------------------------------------------------------------

K = 2  # classes; label K is background
GT = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
GT_CLASSES = torch.tensor([1])
ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 40.0, 40.0],  # a0: IoU 1
        [20.0, 0.0, 60.0, 40.0],  # a1: IoU 1/3, intersection / smaller area 0.5
        [10.0, 10.0, 30.0, 30.0],  # a2: inside the GT, IoU 0.25, intersection / smaller 1
        [100.0, 100.0, 140.0, 140.0],  # a3: no overlap
        [0.0, 0.0, 40.0, 90.0],  # a4: IoU 0.444 (ignored band), intersection / smaller 1
    ]
)
P_HAT = torch.tensor([0.0, 0.9, 0.9, 0.99, 0.0])  # predicted probability of class 1


def _scores(p_of_class1):
    scores = torch.zeros(len(p_of_class1), K)
    scores[:, 1] = p_of_class1
    scores[:, 0] = 0.5  # another class's score never counts for this GT
    return scores


def _assign(alpha, thresh=0.75, p=P_HAT, promote="any"):
    """(labels, matched) of iac_assignment on the layout above; its promoted mask is checked
    against the static rule's labels."""
    labels, matched, promoted = iac_assignment(
        ANCHORS, GT, GT_CLASSES, _scores(p), num_classes=K, alpha=alpha, score_thresh=thresh,
        promote=promote,
    )  # fmt: skip
    _, static = static_iou_assignment(pairwise_iou(Boxes(GT), Boxes(ANCHORS)))
    assert torch.equal(promoted, (labels >= 0) & (labels < K) & (static != 1))
    if promote == "ignored":
        assert not (promoted & (static == 0)).any()  # a negative of the IoU rule stays negative
    return labels, matched


def test_iac_scores_by_hand():
    s = iac_scores(ANCHORS, GT, P_HAT[None, :], alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([[0.5, 0.7, 0.95, 0.0, 0.5]]))


def test_hand_made_layout_promote_any():
    """promote "any" (the score clause first): a0 (IoU >= fg) stays positive with p^ = 0; a2
    (IoU 0.25 <= bg, but p^ = 0.9 and inside the box: s = 0.95) turns positive; a1 (s = 0.7)
    stays negative; a3 (p^ = 0.99 but no overlap) stays negative; a4 (IoU in the ignored band,
    s = 0.5) stays ignored."""
    labels, matched = _assign(alpha=0.5, promote="any")
    assert labels.tolist() == [1, K, 1, K, -1]
    assert matched[labels == 1].tolist() == [0, 0]
    _, static = static_iou_assignment(pairwise_iou(Boxes(GT), Boxes(ANCHORS)))
    assert static.tolist() == [1, 0, 0, 0, -1]  # the baseline rule on the same layout


def test_hand_made_layout_promote_ignored():
    """promote "ignored" (the default): IoU <= bg stays negative whatever s, so a2 (s = 0.95)
    is not promoted; a4 in the ignored band turns positive once s >= 0.75, i.e. p^ >= 0.5
    (0.5 p^ + 0.5 * 1), and stays ignored below."""
    labels, matched = _assign(alpha=0.5, promote="ignored")
    assert labels.tolist() == [1, K, K, K, -1]
    p = P_HAT.clone()
    p[4] = 0.5
    labels, matched = _assign(alpha=0.5, p=p, promote="ignored")
    assert labels.tolist() == [1, K, K, K, 1] and matched.tolist()[4] == 0
    p[4] = 0.49
    labels, _ = _assign(alpha=0.5, p=p, promote="ignored")
    assert labels.tolist() == [1, K, K, K, -1]
    # alpha = 0: geometry only; a4 contains the GT (intersection / smaller area 1)
    labels, _ = _assign(alpha=0.0, p=torch.zeros(5), promote="ignored")
    assert labels.tolist() == [1, K, K, K, 1]


def test_alpha_limits():
    """alpha = 0: s = intersection / smaller area, the predictions do not matter (a2 and a4,
    inside one another, turn positive; a1 at 0.5 does not). alpha = 1: s = p^ on anchors
    overlapping the GT (a1 and a2 turn positive; a3 overlaps nothing)."""
    for p in (P_HAT, torch.zeros(5), torch.ones(5)):
        labels, _ = _assign(alpha=0.0, p=p)
        assert labels.tolist() == [1, K, 1, K, 1]
    labels, _ = _assign(alpha=1.0)
    assert labels.tolist() == [1, 1, 1, K, -1]
    labels, _ = _assign(alpha=1.0, p=torch.zeros(5))  # no confident prediction: static rule
    assert labels.tolist() == [1, K, K, K, -1]


def test_threshold_one_needs_both_terms_at_one():
    labels, _ = _assign(alpha=0.5, thresh=1.0, p=torch.tensor([0.0, 1.0, 1.0, 1.0, 0.99]))
    assert labels.tolist() == [1, K, 1, K, -1]


def test_zero_gt_image_is_all_background():
    labels, matched, promoted = iac_assignment(
        ANCHORS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), _scores(P_HAT),
        num_classes=K,
    )  # fmt: skip
    assert labels.tolist() == [K] * 5 and matched.tolist() == [0] * 5 and not promoted.any()


def test_promoted_anchor_goes_to_the_gt_of_highest_score():
    """An anchor between two GTs, with the same intersection / smaller area (0.75) for both and
    IoU 0.18 with each: with promote "any" it is positive for the GT whose class it predicts
    better; with promote "ignored" it stays negative (IoU < bg)."""
    gts = torch.tensor([[0.0, 0.0, 40.0, 40.0], [30.0, 0.0, 70.0, 40.0]])
    anchors = torch.cat([gts, torch.tensor([[25.0, 10.0, 45.0, 30.0]])])
    scores = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.2, 0.9]])

    def assign(promote):
        return iac_assignment(
            anchors, gts, torch.tensor([0, 1]), scores, num_classes=K, alpha=0.5,
            score_thresh=0.75, promote=promote,
        )  # fmt: skip

    labels, matched, promoted = assign("any")
    assert promoted.tolist() == [False, False, True]
    assert labels.tolist() == [0, 1, 1] and matched.tolist() == [0, 1, 1]
    labels, _, promoted = assign("ignored")
    assert labels.tolist() == [0, 1, K] and not promoted.any()
    scores[2] = torch.tensor([0.9, 0.2])
    labels, matched, _ = assign("any")
    assert labels.tolist() == [0, 1, 0] and matched.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alpha=1.5), "MODEL.DC_LOSS.IAC.ALPHA"),
        (dict(alpha=0.5, thresh=0.0), "MODEL.DC_LOSS.IAC.SCORE_THRESH"),
        (dict(alpha=0.5, promote="negatives"), "MODEL.DC_LOSS.IAC.PROMOTE"),
    ],
)
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _assign(**kwargs)
