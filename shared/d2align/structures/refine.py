"""IoU-Net optimization-based box refinement (Jiang et al. 2018, §3.3, Algorithm 2).

Gradient ascent on the box coordinates of a differentiable IoU predictor, with a per-box
early stop. The predictor is any callable `iou_fn(boxes: Tensor[N, 4]) -> Tensor[N]`, e.g. an
IoU-Net head on PrRoI-pooled features (a closure holding the features, image indices and
classes of the N boxes).

Shape legend:
    N: number of boxes

Boxes are XYXY in absolute pixels.
"""

from typing import Callable, Optional, Tuple

import torch

__all__ = ["refine_boxes"]


def _score_and_grad(
    iou_fn: Callable[[torch.Tensor], torch.Tensor], boxes: torch.Tensor, need_grad: bool
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Predicted IoU (Tensor[N]) of `boxes` and, if `need_grad`, its gradient (Tensor[N, 4])."""
    with torch.enable_grad():
        boxes = boxes.detach().requires_grad_(need_grad)
        score = iou_fn(boxes)
        if score.shape != (boxes.shape[0],):
            raise ValueError(
                f"iou_fn must return one predicted IoU per box, shape [{boxes.shape[0]}], got "
                f"{tuple(score.shape)}"
            )
        if not need_grad:
            return score.detach(), None
        if not score.requires_grad:
            raise ValueError("iou_fn must be differentiable w.r.t. the boxes it is given")
        # only w.r.t. the boxes: the predictor's parameters get no .grad
        (grad,) = torch.autograd.grad(score.sum(), boxes, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(boxes)
    return score.detach(), grad


def _enforce_min_size(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Boxes (Tensor[N, 4]) narrower/shorter than `min_size` get x1, x2 (y1, y2) reset to the
    center of the stepped coordinates +- min_size / 2; other boxes are unchanged."""
    lo, hi = boxes[:, :2], boxes[:, 2:]
    center = 0.5 * (lo + hi)
    too_small = (hi - lo) < min_size
    lo = torch.where(too_small, center - 0.5 * min_size, lo)
    hi = torch.where(too_small, center + 0.5 * min_size, hi)
    return torch.cat([lo, hi], dim=1)


def refine_boxes(
    boxes: torch.Tensor,
    iou_fn: Callable[[torch.Tensor], torch.Tensor],
    step_size: float = 0.5,
    omega1: float = 0.001,
    omega2: float = -0.01,
    max_iters: int = 5,
    min_size: float = 0.01,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refine boxes by gradient ascent on a predicted IoU (IoU-Net Algorithm 2).

    Each iteration, for every box j not yet stopped (paper symbols in brackets):

    1. grad = d iou_fn(b_j) / d b_j, PrevScore = iou_fn(b_j);
    2. b_j <- b_j + lambda * scale(grad, b_j) [line 6], where scale multiplies the x1, x2
       components by the box width and the y1, y2 components by its height. The scaled vector
       is the gradient w.r.t. the size-normalised coordinates (x / w, y / h) -- the paper's
       "equivalent to optimizing in (x/w, y/h, log w, log h)"; as in Algorithm 2 it is added
       to the pixel coordinates, so `step_size` = lambda = 0.5 is the paper's setting. (For a
       true-IoU-like predictor, d IoU / d x ~ 1 / w, so each step moves a coordinate by about
       lambda * O(1) pixels whatever the box size.)
    3. NewScore = iou_fn(b_j). The box stops [lines 8-9] when
       |NewScore - PrevScore| < omega1 (converged; the new box is kept), or when
       NewScore - PrevScore < omega2 (localization degenerated; the step is undone and the
       previous box and score are kept -- Algorithm 2 only stops the box, the revert is ours).
       Drops between omega2 and -omega1 are tolerated, as in the paper.

    Validity rule: a step that would leave a box narrower (shorter) than `min_size` pixels
    sets its x1, x2 (y1, y2) to the center of the stepped coordinates +- min_size / 2, so
    x1 < x2 and y1 < y2 always hold. Boxes are not clipped to the image; the caller clips.

    `iou_fn` is always called on all N boxes in their input order (stopped boxes frozen), so
    a closure may carry per-box data such as image indices or classes. It is run with
    autograd enabled even under `torch.no_grad()`; only the gradient w.r.t. the boxes is
    taken, so the predictor's parameters get no `.grad`. It is called max_iters + 1 times at
    most (once per iteration plus once for the input boxes).

    Args:
        boxes (Tensor[N, 4]): XYXY boxes in pixels, floating point, positive size.
        iou_fn (callable): Tensor[N, 4] -> Tensor[N], predicted IoU, differentiable w.r.t. the
            boxes.
        step_size (float): lambda, the step size (paper: 0.5).
        omega1 (float): Omega_1 >= 0, early-stop threshold on |score change| (paper: 0.001).
        omega2 (float): Omega_2 < 0, localization degeneration tolerance (paper: -0.01).
        max_iters (int): T, the number of iterations (paper: 5).
        min_size (float): smallest width/height a step may produce, in pixels.

    Returns:
        boxes (Tensor[N, 4]): refined XYXY boxes, detached.
        iou (Tensor[N]): predicted IoU of the returned boxes, detached.
        num_iters (Tensor[N], int64): iterations each box took part in, including the one that
            stopped it (< max_iters for a box stopped early).
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        raise ValueError(
            f"boxes must be a floating-point [N, 4] XYXY tensor, got {tuple(boxes.shape)} "
            f"{boxes.dtype}"
        )
    if not (omega1 >= 0 and omega2 < 0 and max_iters >= 0 and min_size > 0):
        raise ValueError(
            "need omega1 >= 0, omega2 < 0, max_iters >= 0 and min_size > 0, got "
            f"omega1={omega1}, omega2={omega2}, max_iters={max_iters}, min_size={min_size}"
        )
    bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"boxes[{i}] = {boxes[i].tolist()} has a non-positive size")

    boxes = boxes.detach().clone()
    num_iters = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] == 0:
        return boxes, boxes.new_zeros(0), num_iters

    score, grad = _score_and_grad(iou_fn, boxes, need_grad=max_iters > 0)
    active = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for it in range(max_iters):
        if not active.any():
            break
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        stepped = _enforce_min_size(boxes + step_size * size * grad, min_size)
        stepped = torch.where(active[:, None], stepped, boxes)
        new_score, new_grad = _score_and_grad(iou_fn, stepped, need_grad=it + 1 < max_iters)

        change = new_score - score
        num_iters += active.long()
        degraded = active & (change < omega2)
        converged = active & (change.abs() < omega1)
        accept = active & ~degraded
        boxes = torch.where(accept[:, None], stepped, boxes)
        score = torch.where(accept, new_score, score)
        if new_grad is not None:
            grad = torch.where(accept[:, None], new_grad, grad)
        active &= ~(degraded | converged)
    return boxes, score, num_iters
