"""Anchor-to-ground-truth assignment for dense (one-stage) detectors, on one image.

Pure, vectorised tensor functions (no loop over anchors or ground truths). They take a quality
matrix between the G ground-truth boxes and the A anchors of one image (IoU, or any score where
higher is better and <= 0 means "no match") and return, per anchor, the index of its
ground truth and a label in detectron2's `Matcher` convention.

Shapes and conventions:
    G: number of ground-truth boxes (may be 0); A: number of anchors.
    quality: (G, A) float, e.g. `pairwise_iou(gt_boxes, anchors)`.
    matched_gt: (A,) int64 in [0, G); meaningful only where the label is not 0 (0 when G = 0).
    labels: (A,) int8; 1 = positive, 0 = negative (background), -1 = ignored.

Ownership rule (shared by every function here, so that they agree with one another): an anchor
can only be assigned to one ground truth, its *owner*. The owner is the ground truth of highest
quality with the anchor, except that every ground truth *claims* its own best anchor(s) (all
anchors tied at its highest quality, if that is > 0). An anchor claimed by several ground truths
goes to the claimant of highest quality with it; exact ties go to the lower ground-truth index.
So every ground truth keeps at least its best anchor, unless that same anchor is also the best
anchor of another ground truth that overlaps it more.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "anchor_owners",
    "static_iou_assignment",
    "count_per_gt",
    "topk_per_gt_assignment",
    "all_background_labels",
]


def anchor_owners(quality: Tensor, claimants: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The owner of every anchor (see the module docstring).

    Args:
        quality: (G, A) float, G >= 1.
        claimants: (G,) bool, the ground truths allowed to claim their best anchor
            (default: all of them).

    Returns:
        owner: (A,) int64, index of the anchor's owner.
        claimed: (A,) bool, True for anchors claimed as some claimant's best anchor.
    """
    _, owner = quality.max(dim=0)
    best_per_gt = quality.max(dim=1, keepdim=True).values  # (G, 1)
    is_best = (quality == best_per_gt) & (best_per_gt > 0)
    if claimants is not None:
        is_best &= claimants[:, None]
    claimed = is_best.any(dim=0)
    claim_owner = torch.where(is_best, quality, quality.new_tensor(-1.0)).argmax(dim=0)
    return torch.where(claimed, claim_owner, owner), claimed


def _empty_assignment(num_anchors: int, device) -> Tuple[Tensor, Tensor]:
    matched = torch.zeros(num_anchors, dtype=torch.int64, device=device)
    return matched, torch.zeros(num_anchors, dtype=torch.int8, device=device)


def all_background_labels(
    num_anchors: int, num_classes: int, device
) -> Tuple[Tensor, Tensor, Tensor]:
    """The training targets of an image without ground truth, in the class-label form the
    projects' RetinaNet assignments return (Mutual Guidance, DC Loss's IAC): every anchor
    background, none selected.

    Returns:
        class_labels: (A,) int64, all `num_classes` (background); matched_gt: (A,) int64, 0;
        an anchor mask (A,) bool, all False (no anchor regressed, none promoted).
    """
    return (
        torch.full((num_anchors,), num_classes, dtype=torch.int64, device=device),
        torch.zeros(num_anchors, dtype=torch.int64, device=device),
        torch.zeros(num_anchors, dtype=torch.bool, device=device),
    )


def static_iou_assignment(
    iou: Tensor, neg_threshold: float = 0.4, pos_threshold: float = 0.5
) -> Tuple[Tensor, Tensor]:
    """The static IoU_anchor rule of RetinaNet / SSD.

    An anchor is positive when its highest IoU over ground truths is >= `pos_threshold`,
    ignored when it is in [`neg_threshold`, `pos_threshold`), negative below; in addition every
    ground truth's best anchor(s) are positive (low-quality matches), matched to it as described
    in the module docstring. This is detectron2's `Matcher([0.4, 0.5], [0, -1, 1],
    allow_low_quality_matches=True)` except that (i) a claimed best anchor is matched to the
    ground truth that claims it, not to its highest-IoU ground truth, and (ii) a ground truth
    whose best IoU is 0 claims nothing.

    Args:
        iou: (G, A) IoU between ground-truth boxes and anchors.
        neg_threshold, pos_threshold: the two thresholds, 0 < neg <= pos <= 1.

    Returns:
        matched_gt: (A,) int64; labels: (A,) int8 in {1, 0, -1}.
    """
    if not 0.0 < neg_threshold <= pos_threshold <= 1.0:
        raise ValueError(
            f"IoU thresholds must satisfy 0 < neg <= pos <= 1, got {neg_threshold}, "
            f"{pos_threshold}"
        )
    num_gt, num_anchors = iou.shape
    if num_gt == 0:
        return _empty_assignment(num_anchors, iou.device)
    owner, claimed = anchor_owners(iou)
    max_iou = iou.max(dim=0).values
    labels = torch.full((num_anchors,), -1, dtype=torch.int8, device=iou.device)
    labels[max_iou < neg_threshold] = 0
    labels[(max_iou >= pos_threshold) | claimed] = 1
    return owner, labels


def count_per_gt(matched_gt: Tensor, labels: Tensor, num_gt: int) -> Tuple[Tensor, Tensor]:
    """Number of positive and of ignored anchors matched to each ground truth.

    Args:
        matched_gt, labels: (A,) as returned by `static_iou_assignment`.
        num_gt: G.

    Returns:
        num_pos: (G,) int64 (N_p of Mutual Guidance); num_ignored: (G,) int64 (N_i).
    """
    num_pos = torch.bincount(matched_gt[labels == 1], minlength=num_gt)
    num_ignored = torch.bincount(matched_gt[labels == -1], minlength=num_gt)
    return num_pos, num_ignored


def topk_per_gt_assignment(
    quality: Tensor, num_pos: Tensor, num_ignored: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Dynamic thresholds: each ground truth's `num_pos[g]` best anchors are positive, its next
    `num_ignored[g]` ignored, the rest negative.

    Ranking is among the anchors the ground truth owns for this quality (module docstring;
    only ground truths with num_pos > 0 claim their best anchor), so an anchor is assigned to at
    most one ground truth. This equals thresholding the quality at the num_pos-th and the
    (num_pos + num_ignored)-th largest value, except that exactly num_pos (num_ignored) anchors
    are chosen when values tie at a threshold. Anchors of quality <= 0 are never chosen, so a
    ground truth gets fewer anchors when it owns fewer of positive quality.

    Args:
        quality: (G, A) float, e.g. the IoU of the regressed boxes with the ground truths.
        num_pos: (G,) int, e.g. from `count_per_gt` on the static rule.
        num_ignored: (G,) int, or None for no ignored anchors.

    Returns:
        matched_gt: (A,) int64; labels: (A,) int8 in {1, 0, -1}.
    """
    num_gt, num_anchors = quality.shape
    if num_ignored is None:
        num_ignored = torch.zeros_like(num_pos)
    if num_pos.shape != (num_gt,) or num_ignored.shape != (num_gt,):
        raise ValueError(
            f"num_pos {tuple(num_pos.shape)} and num_ignored {tuple(num_ignored.shape)} must "
            f"have shape ({num_gt},), one count per ground truth"
        )
    matched, labels = _empty_assignment(num_anchors, quality.device)
    if num_gt == 0:
        return matched, labels
    owner, _ = anchor_owners(quality, claimants=num_pos > 0)
    gt_index = torch.arange(num_gt, device=quality.device)
    owned_quality = torch.where(owner[None, :] == gt_index[:, None], quality, 0.0)
    k = min(int((num_pos + num_ignored).max()), num_anchors)
    if k == 0:
        return owner, labels
    values, anchor_idx = owned_quality.topk(k, dim=1)  # (G, k), each anchor in <= 1 row
    rank = torch.arange(k, device=quality.device)[None, :]
    chosen = values > 0
    positive = chosen & (rank < num_pos[:, None])
    ignored = chosen & ~positive & (rank < (num_pos + num_ignored)[:, None])
    labels[anchor_idx[ignored]] = -1
    labels[anchor_idx[positive]] = 1
    return owner, labels
