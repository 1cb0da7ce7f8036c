"""Slow, plain-Python references of the NMS family in `d2align.ops.nms`.

Each loops over boxes exactly as its paper's pseudo-code does, one class at a time, on Python
floats (float64). They are the oracles of the compiled kernels in tests: in float64 the kernels
must agree with them bit for bit (the same floating-point operations in the same order).

Shapes: N boxes, K kept. boxes Tensor[N, 4] XYXY absolute; scores Tensor[N]; idxs integer
Tensor[N] (class of each box). Each function returns (keep int64 Tensor[K], scores Tensor[K] of
the dtype of the input scores), sorted as its compiled twin documents.
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch

__all__ = ["iou_guided_nms_reference", "soft_nms_reference", "cl_balanced_nms_reference"]


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two XYXY boxes, as detectron2's `pairwise_iou` (no +1; 0 without overlap)."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    if not inter > 0:
        return 0.0
    return inter / (area_a + area_b - inter)


def _by_class(idxs: torch.Tensor) -> Dict[int, List[int]]:
    """Box indices of each class, ascending."""
    classes: Dict[int, List[int]] = {}
    for i, c in enumerate(idxs.tolist()):
        classes.setdefault(c, []).append(i)
    return classes


def _result(
    kept: List[Tuple[int, float, float]], like: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sorts (index, rank, score) triples by (rank desc, index asc) into (keep, scores)."""
    kept = sorted(kept, key=lambda t: (-t[1], t[0]))
    keep = torch.tensor([t[0] for t in kept], dtype=torch.int64, device=like.device)
    scores = torch.tensor([t[2] for t in kept], dtype=like.dtype, device=like.device)
    return keep, scores


def iou_guided_nms_reference(
    boxes: torch.Tensor,
    cls_scores: torch.Tensor,
    loc_scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """IoU-Net Algorithm 1, per class. See `d2align.ops.batched_iou_guided_nms`."""
    b, cls, loc = boxes.tolist(), cls_scores.tolist(), loc_scores.tolist()
    kept = []
    for members in _by_class(idxs).values():
        remaining = list(members)
        while remaining:
            m = max(remaining, key=lambda i: (loc[i], -i))  # highest loc; lowest index on ties
            remaining.remove(m)
            s = cls[m]
            for j in list(remaining):
                if _box_iou(b[m], b[j]) > iou_threshold:
                    s = max(s, cls[j])
                    remaining.remove(j)
            kept.append((m, loc[m], s))
    return _result(kept, cls_scores)


def soft_nms_reference(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS of Bodla et al., per class. See `d2align.ops.batched_soft_nms`."""
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft_nms_reference: unknown method '{method}'")
    b, cur = boxes.tolist(), scores.tolist()
    kept = []
    for members in _by_class(idxs).values():
        alive = [i for i in members if not cur[i] < score_threshold]
        while alive:
            m = max(alive, key=lambda i: (cur[i], -i))
            alive.remove(m)
            kept.append((m, cur[m], cur[m]))
            for k in alive:
                iou = _box_iou(b[m], b[k])
                if method == "gaussian":
                    cur[k] = cur[k] * math.exp(-(iou * iou) / sigma)
                elif iou > iou_threshold:
                    cur[k] = cur[k] * (1.0 - iou)
            alive = [k for k in alive if not cur[k] < score_threshold]
    return _result(kept, scores)


def cl_balanced_nms_reference(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float = 0.5,
    temperature: float = 1.0,
    dis_scale: float = 1.0,
    center_weights: str = "logit",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """CL-balanced NMS (DC Loss eq. 6-7), per class. See `d2align.ops.batched_cl_balanced_nms`."""
    b, p = boxes.tolist(), scores.tolist()
    if center_weights == "logit":  # f = log(p / (1 - p)), p clamped to [1e-6, 1 - 1e-6]
        f = [math.log(q / (1.0 - q)) for q in (min(max(q, 1e-6), 1.0 - 1e-6) for q in p)]
    else:
        f = p
    kept = []
    for members in _by_class(idxs).values():
        remaining = sorted(members, key=lambda i: (-p[i], i))
        while remaining:
            seed = remaining.pop(0)
            cluster = [seed] + [j for j in remaining if _box_iou(b[seed], b[j]) > iou_threshold]
            remaining = [j for j in remaining if j not in cluster]
            centers = [((b[k][0] + b[k][2]) * 0.5, (b[k][1] + b[k][3]) * 0.5) for k in cluster]
            # eq. 6: softmax(f / temperature)-weighted center of the cluster
            weights = [math.exp((f[k] - f[seed]) / temperature) for k in cluster]
            z = cx = cy = 0.0
            for w, (x, y) in zip(weights, centers):
                z, cx, cy = z + w, cx + w * x, cy + w * y
            cx, cy = cx / z, cy / z
            # the scale: the diagonal of the box enclosing the cluster
            ex = max(b[k][2] for k in cluster) - min(b[k][0] for k in cluster)
            ey = max(b[k][3] for k in cluster) - min(b[k][1] for k in cluster)
            diag = math.sqrt(ex * ex + ey * ey)
            # eq. 7: p + dis, dis = dis_scale * (1 - distance to the center / diag)
            best, best_score = None, None
            for k, (x, y) in zip(cluster, centers):
                dx, dy = x - cx, y - cy
                ratio = min(math.sqrt(dx * dx + dy * dy) / diag, 1.0) if diag > 0 else 0.0
                s = p[k] + dis_scale * (1.0 - ratio)
                if best is None or s > best_score:
                    best, best_score = k, s
            kept.append((best, best_score, best_score))
    return _result(kept, scores)
