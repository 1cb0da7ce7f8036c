"""The NMS family: IoU-guided NMS, Soft-NMS and Classification-Localization-balanced NMS.

All are batched over classes like detectron2's / torchvision's `batched_nms`: boxes with
different `idxs` never interact, and the result equals running each class independently (the
kernels process one class at a time, so no coordinate offset perturbs the IoUs). Ties are
broken deterministically, by the lower box index. The slow references of each algorithm are in
`d2align.ops.nms_reference`.

Shapes: N boxes, K kept.
    boxes:  Tensor[N, 4], floating point, XYXY absolute pixels
    scores: Tensor[N], floating point; boxes and scores are computed in the widest of their
            dtypes and float32 (bfloat16 scores under autocast next to float32 boxes: float32)
    idxs:   integer Tensor[N], the class (or any group id) of each box
    keep:   int64 Tensor[K], indices into the N boxes

IoU is detectron2's `pairwise_iou` (no +1; 0 for boxes that do not intersect, so boxes of zero
area never suppress anything); "overlap" means IoU > threshold, strictly, like torchvision.

IoU-guided NMS has a CUDA kernel (when d2align._C is built with CUDA); Soft-NMS and CL-balanced
NMS are sequential by nature and run on CPU, inputs on a GPU are copied there and back.
"""

import logging
from typing import Tuple

import torch

from ._ext import compiled_with_cuda, require_ext

__all__ = [
    "batched_iou_guided_nms",
    "batched_soft_nms",
    "batched_cl_balanced_nms",
    "cl_nms_center_logits",
]

# clamp of p before its logit: finite f for scores of exactly 0 or 1
_LOGIT_EPS = 1e-6


def _check_inputs(op: str, boxes: torch.Tensor, idxs: torch.Tensor, **scores):
    """Validates the common arguments and brings boxes and scores to one floating dtype: the
    widest of theirs and float32 (under autocast, scores in bfloat16 / float16 next to float32
    boxes are common; half-precision boxes are widened, which loses nothing). The kernels check
    that boxes and scores are finite, raising ValueError, in one serial pass.

    Returns:
        (boxes, scores..., idxs as int64), boxes and scores in the common dtype, in the order
        of the keyword arguments.
    """
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{op}: boxes must be a Tensor of shape [N, 4], got {_shape(boxes)}")
    n = boxes.shape[0]
    dtype = torch.float32
    for name, x in (("boxes", boxes), *scores.items()):
        if isinstance(x, torch.Tensor) and not x.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {x.dtype}")
    for name, s in scores.items():
        if not isinstance(s, torch.Tensor) or s.shape != (n,):
            raise ValueError(f"{op}: {name} must be a Tensor of shape [{n}], got {_shape(s)}")
        if s.device != boxes.device:
            raise ValueError(f"{op}: {name} is on {s.device} but boxes are on {boxes.device}")
        dtype = torch.promote_types(dtype, s.dtype)
    dtype = torch.promote_types(dtype, boxes.dtype)
    if not isinstance(idxs, torch.Tensor) or idxs.shape != (n,):
        raise ValueError(f"{op}: idxs must be a Tensor of shape [{n}], got {_shape(idxs)}")
    if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
        raise TypeError(f"{op}: idxs must be an integer tensor, got {idxs.dtype}")
    if idxs.device != boxes.device:
        raise ValueError(f"{op}: idxs is on {idxs.device} but boxes are on {boxes.device}")
    return (boxes.to(dtype), *(s.to(dtype) for s in scores.values()), idxs.long())


_WARNED = set()


def _warn_once_cpu_fallback(op: str) -> None:
    """Say once per op that CUDA inputs run on the CPU because the build has no CUDA kernels."""
    if op not in _WARNED:
        _WARNED.add(op)
        logging.getLogger("d2align").warning(
            f"{op}: CUDA inputs, but d2align._C was built without CUDA kernels: running on the "
            "CPU (copies there and back). Rebuild with nvcc present: FORCE_CUDA=1 bash "
            "scripts/env.sh"
        )


def _check_threshold(op: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{op}: {name} must be in [0, 1], got {value}")


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _on_cpu(op, *tensors, **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
    """Runs a CPU-only op, moving its inputs to CPU and its results back to their device."""
    device = tensors[0].device
    keep, scores = op(*[t.cpu() for t in tensors], **kwargs)
    return keep.to(device), scores.to(device)


# candidates above which IoU-guided NMS runs one class per call (see its docstring)
MAX_BOXES_PER_CALL = 16384


def _iou_guided_per_class(boxes, cls_scores, loc_scores, idxs, iou_threshold):
    """`batched_iou_guided_nms` one class at a time, merged in its order (loc desc, index
    asc)."""
    keeps, scores = [], []
    for c in idxs.unique():
        members = (idxs == c).nonzero().squeeze(1)
        keep, new = batched_iou_guided_nms(
            boxes[members], cls_scores[members], loc_scores[members], idxs[members], iou_threshold
        )
        keeps.append(members[keep])
        scores.append(new)
    keep, new = torch.cat(keeps), torch.cat(scores)
    by_index = torch.sort(keep, stable=True).indices
    keep, new = keep[by_index], new[by_index]
    by_loc = torch.sort(loc_scores[keep], descending=True, stable=True).indices
    return keep[by_loc], new[by_loc]


def batched_iou_guided_nms(
    boxes: torch.Tensor,
    cls_scores: torch.Tensor,
    loc_scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """IoU-guided NMS (IoU-Net, Jiang et al. ECCV 2018, Algorithm 1), per class.

    Repeatedly takes the remaining box `m` with the highest localization confidence (predicted
    IoU), removes every remaining box `j` of its class with IoU(m, j) > `iou_threshold`, and
    gives `m` the classification score max(s_m, s_j over the removed j).

    Args:
        boxes (Tensor[N, 4]): XYXY absolute.
        cls_scores (Tensor[N]): classification confidences S.
        loc_scores (Tensor[N]): localization confidences I (predicted IoU), the ranking key.
        idxs (Tensor[N]): class of each box.
        iou_threshold (float): Omega_nms.

    Memory: the CUDA kernel holds an N x ceil(N / 64) bit mask of the overlaps (312 MB at
    N = 50k). Above `MAX_BOXES_PER_CALL` candidates the classes are run one call each (the same
    result: classes never interact), so the mask is that of the largest class.

    Returns:
        keep (int64 Tensor[K]): kept boxes, sorted by (loc_scores desc, index asc).
        scores (Tensor[K]): their updated classification scores.
    """
    op = "batched_iou_guided_nms"
    boxes, cls_scores, loc_scores, idxs = _check_inputs(
        op, boxes, idxs, cls_scores=cls_scores, loc_scores=loc_scores
    )
    _check_threshold(op, "iou_threshold", iou_threshold)
    require_ext("iou_guided_nms")
    if boxes.shape[0] > MAX_BOXES_PER_CALL and idxs.unique().numel() > 1:
        return _iou_guided_per_class(boxes, cls_scores, loc_scores, idxs, iou_threshold)
    args = (boxes, cls_scores, loc_scores, idxs)
    if boxes.is_cuda and not compiled_with_cuda():
        _warn_once_cpu_fallback(op)
        return _on_cpu(torch.ops.d2align.iou_guided_nms, *args, iou_threshold=iou_threshold)
    return torch.ops.d2align.iou_guided_nms(*args, iou_threshold=iou_threshold)


def batched_soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla et al. ICCV 2017), per class.

    Repeatedly takes the remaining box `m` with the highest current score and decays the score
    of every other remaining box `j` of its class: linear, s_j *= 1 - IoU(m, j) when
    IoU(m, j) > `iou_threshold`; Gaussian, s_j *= exp(-IoU(m, j)^2 / sigma) (the threshold is
    not used). A box whose score falls below `score_threshold` is dropped (also initially).

    Args:
        boxes (Tensor[N, 4]): XYXY absolute.
        scores (Tensor[N]): classification scores.
        idxs (Tensor[N]): class of each box.
        method (str): "linear" or "gaussian".
        iou_threshold (float): N_t of the linear method.
        sigma (float): sigma of the Gaussian method, > 0.
        score_threshold (float): boxes with a (decayed) score below it are dropped.

    Returns:
        keep (int64 Tensor[K]): kept boxes, sorted by (new score desc, index asc), which within a
            class is the order of selection.
        scores (Tensor[K]): their decayed scores.
    """
    op = "batched_soft_nms"
    boxes, scores, idxs = _check_inputs(op, boxes, idxs, scores=scores)
    if method not in ("linear", "gaussian"):
        raise ValueError(f"{op}: method must be 'linear' or 'gaussian', got {method!r}")
    _check_threshold(op, "iou_threshold", iou_threshold)
    if not sigma > 0:
        raise ValueError(f"{op}: sigma must be positive, got {sigma}")
    require_ext("soft_nms")
    return _on_cpu(
        torch.ops.d2align.soft_nms,
        boxes,
        scores,
        idxs,
        method=method,
        iou_threshold=iou_threshold,
        sigma=sigma,
        score_threshold=score_threshold,
    )


def cl_nms_center_logits(scores: torch.Tensor, center_weights: str) -> torch.Tensor:
    """f of eq. 6 (CL-balanced NMS) from the scores p: Tensor[N] -> Tensor[N], same dtype.

    "logit": log(p / (1 - p)) of p clamped to [1e-6, 1 - 1e-6]; "probability": p itself.
    """
    if center_weights == "probability":
        return scores
    if center_weights == "logit":
        return torch.logit(scores, eps=_LOGIT_EPS)
    raise ValueError(f"center_weights must be 'logit' or 'probability', got {center_weights!r}")


def batched_cl_balanced_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float = 0.5,
    temperature: float = 1.0,
    dis_scale: float = 1.0,
    center_weights: str = "logit",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Classification-Localization-balanced NMS (DC Loss paper, §3, eq. 6-7), per class.

    The paper estimates the object's center as the softmax-weighted mean of the box centers
    (eq. 6) and selects by `p_i + dis(c_i, c_hat)` (eq. 7), without saying over which boxes the
    mean runs or what `dis` is. We make it precise as follows.

    1. Clusters. Boxes are visited by (score desc, index asc), as in standard NMS. The first
       unvisited box is a seed; its cluster is the seed plus every unvisited box of its class
       with IoU(seed, box) > `iou_threshold`; all of them are then visited. The clusters are
       exactly the suppression groups of standard NMS (the seeds are what torchvision `nms`
       keeps), so the set of objects found does not change; only the box representing each
       object does, which is the paper's intent (the localization factor chooses among
       duplicates of one object).
    2. Weighted center (eq. 6): c_hat = sum_k w_k c_k, w = softmax(f / temperature) over the
       cluster, c_k the center of box k. Eq. 6 writes f, a symbol kept apart from the
       probability p of eq. 7: `center_weights` "logit" takes f = log(p / (1 - p)) (p clamped
       to [1e-6, 1 - 1e-6]), the pre-sigmoid score of a one-stage detector and the likelier
       reading; "probability" takes f = p, whose softmax is nearly uniform for p in [0, 1]. A
       smaller temperature concentrates the weights on the most confident boxes.
    3. dis (eq. 7): dis(c_k, c_hat) = dis_scale * (1 - |c_k - c_hat| / g), with g the
       diagonal of the smallest box enclosing the cluster (0 when g = 0). The ratio is in
       [0, 1] (c_k and c_hat lie in the enclosing box; clamped against rounding), so dis
       decreases linearly from dis_scale at the center to 0, and is invariant to the object's
       scale, like DIoU's center penalty rho^2 / c^2; it is linear rather than squared so that
       the small offsets inside one cluster still move the selection. With dis_scale = 1, p
       and dis have the same range [0, 1], the "balance" of the name.
    4. Selection: the cluster is represented by the argmax of p_k + dis_k (the first in visit
       order among equals), returned with that selection score.

    Args:
        boxes (Tensor[N, 4]): XYXY absolute.
        scores (Tensor[N]): classification scores p.
        idxs (Tensor[N]): class of each box.
        iou_threshold (float): the NMS threshold forming the clusters.
        temperature (float): temperature of the softmax of eq. 6, > 0.
        dis_scale (float): the weight of dis against p in eq. 7, >= 0; 0 gives standard NMS.
        center_weights (str): f of eq. 6, "logit" or "probability".

    Returns:
        keep (int64 Tensor[K]): one box per cluster, sorted by (selection score desc, index
            asc). `scores[keep]` are their classification scores.
        selection_scores (Tensor[K]): their p + dis.
    """
    op = "batched_cl_balanced_nms"
    boxes, scores, idxs = _check_inputs(op, boxes, idxs, scores=scores)
    _check_threshold(op, "iou_threshold", iou_threshold)
    if not temperature > 0:
        raise ValueError(f"{op}: temperature must be positive, got {temperature}")
    if not dis_scale >= 0:
        raise ValueError(f"{op}: dis_scale must be >= 0, got {dis_scale}")
    center_logits = cl_nms_center_logits(scores, center_weights)
    require_ext("cl_balanced_nms")
    return _on_cpu(
        torch.ops.d2align.cl_balanced_nms,
        boxes,
        scores,
        center_logits,
        idxs,
        iou_threshold=iou_threshold,
        temperature=temperature,
        dis_scale=dis_scale,
    )
