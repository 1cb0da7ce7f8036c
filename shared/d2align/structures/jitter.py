"""IoU-Net box jittering (Jiang et al. 2018, §3.1): training boxes for an IoU predictor.

The paper transforms every ground-truth box "with a set of randomized parameters", removes the
candidates whose IoU with their GT is below Omega_train = 0.5 and samples the rest uniformly
w.r.t. the IoU. It gives no parameter ranges; the choices here are documented in
:func:`sample_jittered_boxes`.

Shape legend:
    G: number of ground-truth boxes of one image
    M: number of sampled boxes (num_samples, fewer only when an IoU bin cannot be filled)
    C: number of candidates generated in one round

Boxes are XYXY in absolute pixels.
"""

import math
import warnings
from typing import Optional, Tuple

import torch

from .box_ops import aligned_iou

__all__ = ["sample_jittered_boxes"]

# candidates per round: 2x what the short bins need at their observed hit rates, at most
# 100x the number of samples per round, for at most 8 rounds
_OVERSAMPLE = 2
_MAX_CANDIDATES_FACTOR = 100
_MAX_ROUNDS = 8


def _check_gt_boxes(gt_boxes: torch.Tensor) -> None:
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must have shape [G, 4] (XYXY), got {tuple(gt_boxes.shape)}")
    if not gt_boxes.is_floating_point():
        raise ValueError(f"gt_boxes must be a floating-point tensor, got {gt_boxes.dtype}")
    bad = ~torch.isfinite(gt_boxes).all(dim=1)
    bad |= (gt_boxes[:, 2] <= gt_boxes[:, 0]) | (gt_boxes[:, 3] <= gt_boxes[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"gt_boxes[{i}] = {gt_boxes[i].tolist()} has a non-positive size or is not finite "
            "(XYXY boxes need x1 < x2 and y1 < y2)"
        )


def _check_range(name: str, value: Tuple[float, float]) -> None:
    low, high = value
    if not 0 < low <= high:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {value}")


def _jitter(
    gt_boxes: torch.Tensor,
    gt_index: torch.Tensor,
    scale_range: Tuple[float, float],
    shift_range: float,
    aspect_range: Tuple[float, float],
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """One random transform of `gt_boxes[gt_index]` per entry of `gt_index` (Tensor[C])."""
    boxes = gt_boxes[gt_index]
    num = boxes.shape[0]
    rand = torch.rand((num, 5), generator=generator, device=boxes.device, dtype=boxes.dtype)
    strength, u = rand[:, 0], rand[:, 1:]
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x = 0.5 * (boxes[:, 0] + boxes[:, 2]) + strength * (2 * u[:, 0] - 1) * shift_range * width
    ctr_y = 0.5 * (boxes[:, 1] + boxes[:, 3]) + strength * (2 * u[:, 1] - 1) * shift_range * height
    log_lo, log_hi = math.log(scale_range[0]), math.log(scale_range[1])
    log_scale = strength * (log_lo + u[:, 2] * (log_hi - log_lo))
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    log_aspect = strength * (log_lo + u[:, 3] * (log_hi - log_lo))
    new_w = width * torch.exp(log_scale + 0.5 * log_aspect)
    new_h = height * torch.exp(log_scale - 0.5 * log_aspect)
    return torch.stack(
        [ctr_x - 0.5 * new_w, ctr_y - 0.5 * new_h, ctr_x + 0.5 * new_w, ctr_y + 0.5 * new_h], dim=1
    )


def _take_per_bin(
    bins: torch.Tensor, need: torch.Tensor, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """Indices of up to `need[b]` candidates drawn at random from each bin b.

    Args:
        bins (Tensor[C], int64): bin of each candidate, -1 for rejected ones.
        need (Tensor[B], int64): how many candidates each bin still needs.

    Returns:
        Tensor[K], int64: indices into the candidates.
    """
    key = torch.rand(bins.shape, generator=generator, device=bins.device, dtype=torch.float64)
    valid = (bins >= 0).nonzero().squeeze(1)
    # sort by bin, at random within a bin; the rank within its bin picks the first need[b]
    order = valid[torch.argsort(bins[valid].double() + key[valid])]
    sorted_bins = bins[order]
    counts = torch.bincount(sorted_bins, minlength=need.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=bins.device) - starts[sorted_bins]
    return order[rank < need[sorted_bins]]


def sample_jittered_boxes(
    gt_boxes: torch.Tensor,
    num_samples: int,
    min_iou: float = 0.5,
    max_iou: float = 1.0,
    num_bins: int = 20,
    scale_range: Tuple[float, float] = (0.5, 2.0),
    shift_range: float = 0.3,
    aspect_range: Tuple[float, float] = (0.5, 2.0),
    image_size: Optional[Tuple[int, int]] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random transforms of GT boxes with an IoU distribution uniform over [min_iou, max_iou].

    Candidates: each GT box (center cx, cy, size w, h) is transformed with a random strength
    t ~ U(0, 1) that scales every parameter, so that candidates near the identity (IoU near 1)
    are as common as far ones:

    - shift: cx += t * U(-1, 1) * shift_range * w, cy += t * U(-1, 1) * shift_range * h;
    - scale s and aspect change a, log-uniform in their ranges and raised to the power t:
      w' = w * s * sqrt(a), h' = h * s / sqrt(a).

    With the defaults about 78% of the candidates have IoU >= 0.5 and their IoU density varies
    by less than 1.5x over [0.5, 1]. Candidates are clipped to the image when `image_size` is
    given, and their IoU is computed after clipping (it is the true target of the box).
    Candidates with IoU outside [min_iou, max_iou] are dropped; the rest are bucketed into
    `num_bins` equal IoU bins, and every bin gets num_samples // num_bins boxes (the remainder
    goes to bins drawn at random), drawn at random from its candidates. The first round
    generates 2 * num_samples candidates, equally many per GT box; later rounds generate 2x
    what the still-short bins need at the rate they were hit so far (at most
    100 * num_samples), until all bins are full or 8 rounds have run; then a `RuntimeWarning`
    names the bins left short, and fewer than `num_samples` boxes are returned.

    Args:
        gt_boxes (Tensor[G, 4]): XYXY ground-truth boxes of one image, positive size.
        num_samples (int): number of boxes to return in total (over all GT boxes).
        min_iou (float): smallest IoU kept (the paper's Omega_train = 0.5), > 0.
        max_iou (float): largest IoU kept, <= 1.
        num_bins (int): IoU bins over [min_iou, max_iou] that are filled equally.
        scale_range (tuple[float, float]): (low, high) range of the box scale factor s.
        shift_range (float): largest center shift as a fraction of the box width/height.
        aspect_range (tuple[float, float]): (low, high) range of the aspect-ratio factor a.
        image_size (tuple[int, int] or None): (height, width) to clip the boxes to.
        generator (torch.Generator or None): source of randomness, on the device of
            `gt_boxes`; the result is deterministic given its state.

    Returns:
        boxes (Tensor[M, 4]): XYXY jittered boxes, dtype and device of `gt_boxes`, in random
            order.
        gt_index (Tensor[M], int64): index of the GT box each one was made from.
        iou (Tensor[M]): IoU of each box with `gt_boxes[gt_index]`, in [min_iou, max_iou].

    Raises:
        ValueError: a GT box with non-positive size (naming its index) or a bad argument.
    """
    _check_gt_boxes(gt_boxes)
    if not 0 < min_iou < max_iou <= 1:
        raise ValueError(f"need 0 < min_iou < max_iou <= 1, got {min_iou} and {max_iou}")
    if num_samples < 0 or num_bins < 1:
        raise ValueError(f"need num_samples >= 0 and num_bins >= 1, got {num_samples}, {num_bins}")
    if shift_range < 0:
        raise ValueError(f"shift_range must be >= 0, got {shift_range}")
    _check_range("scale_range", scale_range)
    _check_range("aspect_range", aspect_range)

    device, num_gt = gt_boxes.device, gt_boxes.shape[0]
    if num_gt == 0 or num_samples == 0:
        empty = torch.zeros((0,), dtype=gt_boxes.dtype, device=device)
        return empty.view(0, 4), torch.zeros((0,), dtype=torch.int64, device=device), empty

    need = torch.full((num_bins,), num_samples // num_bins, dtype=torch.int64, device=device)
    extra = torch.randperm(num_bins, generator=generator, device=device)[: num_samples % num_bins]
    need[extra] += 1

    max_candidates = _MAX_CANDIDATES_FACTOR * max(num_samples, num_bins)
    landed = torch.zeros(num_bins, dtype=torch.float64, device=device)
    generated = 0
    taken_boxes, taken_gt, taken_iou = [], [], []
    for _ in range(_MAX_ROUNDS):
        if need.sum() == 0:
            break
        if generated == 0:
            num_candidates = _OVERSAMPLE * max(num_samples, num_bins)
        else:
            # aim every short bin at 2x its need, from the rate at which it has been hit so far
            rate = landed.clamp(min=1) / generated
            num_candidates = _OVERSAMPLE * int((need / rate).max())
        per_gt = math.ceil(min(num_candidates, max_candidates) / num_gt)
        gt_index = torch.arange(num_gt, device=device).repeat_interleave(per_gt)
        boxes = _jitter(gt_boxes, gt_index, scale_range, shift_range, aspect_range, generator)
        if image_size is not None:
            height, width = image_size
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        iou = aligned_iou(boxes, gt_boxes[gt_index])
        bins = ((iou - min_iou) / (max_iou - min_iou) * num_bins).floor().long()
        bins = bins.clamp(max=num_bins - 1)  # IoU == max_iou goes to the last bin
        bins[(iou < min_iou) | (iou > max_iou)] = -1
        landed += torch.bincount(bins[bins >= 0], minlength=num_bins)
        generated += gt_index.numel()
        keep = _take_per_bin(bins, need, generator)
        need -= torch.bincount(bins[keep], minlength=num_bins)
        taken_boxes.append(boxes[keep])
        taken_gt.append(gt_index[keep])
        taken_iou.append(iou[keep])

    if need.sum() > 0:
        edges = torch.linspace(min_iou, max_iou, num_bins + 1).tolist()  # cpu: message text
        short = [
            f"[{edges[b]:.3f}, {edges[b + 1]:.3f}): {int(need[b])} missing"
            for b in need.nonzero().squeeze(1).tolist()
        ]
        warnings.warn(
            f"sample_jittered_boxes could not fill {len(short)} IoU bin(s) after "
            f"{_MAX_ROUNDS} rounds ({'; '.join(short)}); returning {num_samples - int(need.sum())}"
            f" of {num_samples} boxes. Widen scale_range/shift_range/aspect_range, or check "
            "that the GT boxes lie inside image_size.",
            RuntimeWarning,
        )

    boxes, gt_index, iou = torch.cat(taken_boxes), torch.cat(taken_gt), torch.cat(taken_iou)
    perm = torch.randperm(boxes.shape[0], generator=generator, device=device)
    return boxes[perm], gt_index[perm], iou[perm]
