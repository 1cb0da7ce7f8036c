"""Diagnostics of the misalignment between classification and localization (IoU-Net §2.1).

Model-agnostic functions on the detections and ground truth of one image, plus the two plots
of the IoU-Net paper:

- Fig. 2: for detections whose IoU with their matched GT is > 0.5, the scatter of the IoU
  against (a) the classification confidence and (b) the predicted IoU, with the Pearson
  correlation (the paper reports 0.217 and 0.617 for a ResNet-50 FPN).
- Fig. 3: the number of positive boxes after no NMS, standard NMS and IoU-guided NMS, grouped
  by their IoU with the matched GT.

Per image: call :func:`match_detections_to_gt` / :func:`positives_by_iou`; over a dataset,
concatenate the IoUs and scores and sum the counts, then call the plotting functions.

Shape legend:
    N: number of detections of one image
    G: number of ground-truth boxes of the same image (of the same class, for class-aware use)
    B: number of IoU bins

Boxes are XYXY in absolute pixels; they may be given as `Tensor[*, 4]`, `numpy.ndarray` or
detectron2 `Boxes`.
"""

import os
from typing import Mapping, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.structures import Boxes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..structures import pairwise_iou

__all__ = [
    "IOU_BIN_EDGES",
    "localization_correlation",
    "match_detections_to_gt",
    "plot_positives_by_iou",
    "plot_score_vs_iou",
    "positives_by_iou",
]

# the IoU groups of IoU-Net Fig. 3: [0.5, 0.6), ..., [0.8, 0.9), [0.9, 1.0]
IOU_BIN_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]
BoxesLike = Union[Boxes, torch.Tensor, np.ndarray]


def _as_box_tensor(boxes: BoxesLike, name: str) -> torch.Tensor:
    # cpu: the diagnostics compute on the CPU (the next line moves any tensor there)
    tensor = boxes.tensor if isinstance(boxes, Boxes) else torch.as_tensor(boxes)
    tensor = tensor.detach().float().cpu()
    if tensor.numel() == 0:
        return tensor.reshape(0, 4)
    if tensor.dim() != 2 or tensor.shape[1] != 4:
        raise ValueError(f"{name} must have shape [*, 4] (XYXY), got {tuple(tensor.shape)}")
    return tensor


def _as_array(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def match_detections_to_gt(
    pred_boxes: BoxesLike, gt_boxes: BoxesLike
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Match every detection to the GT box it overlaps most.

    Args:
        pred_boxes (Boxes, Tensor[N, 4] or ndarray): XYXY detections of one image.
        gt_boxes (Boxes, Tensor[G, 4] or ndarray): XYXY ground truth of the same image.

    Returns:
        iou (Tensor[N], float32): IoU of each detection with its best GT; 0 when G = 0.
        gt_idx (Tensor[N], int64): index of that GT (the first one on ties); -1 when G = 0.
    """
    pred = _as_box_tensor(pred_boxes, "pred_boxes")
    gt = _as_box_tensor(gt_boxes, "gt_boxes")
    if gt.shape[0] == 0:  # cpu: like pred and gt (`_as_box_tensor`)
        return torch.zeros(pred.shape[0]), torch.full((pred.shape[0],), -1, dtype=torch.int64)
    if pred.shape[0] == 0:  # cpu: like pred and gt
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return pairwise_iou(pred, gt).max(dim=1)


def localization_correlation(ious: ArrayLike, scores: ArrayLike, min_iou: float = 0.5) -> float:
    """Pearson correlation between IoU and a confidence, over detections with IoU > min_iou.

    Args:
        ious (Tensor[N] or array): IoU of each detection with its matched GT.
        scores (Tensor[N] or array): classification confidence or predicted IoU.
        min_iou (float): only detections with IoU > min_iou count (the paper's 0.5).

    Returns:
        float: Pearson's r, or NaN when fewer than 2 detections count or either variable is
        constant over them.
    """
    ious, scores = _as_array(ious, "ious"), _as_array(scores, "scores")
    if ious.shape != scores.shape:
        raise ValueError(f"ious and scores differ in length: {ious.shape} vs {scores.shape}")
    keep = ious > min_iou
    if keep.sum() < 2:
        return float("nan")
    x, y = ious[keep] - ious[keep].mean(), scores[keep] - scores[keep].mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    if denom == 0:
        return float("nan")
    return float((x * y).sum() / denom)


def positives_by_iou(
    pred_boxes: BoxesLike, gt_boxes: BoxesLike, bin_edges: Sequence[float] = IOU_BIN_EDGES
) -> np.ndarray:
    """Number of positive detections of one image in each IoU group (IoU-Net Fig. 3).

    Each detection is matched to the GT box it overlaps most. Per GT and per IoU group, only
    one detection counts as positive (the paper keeps the highest-scoring one; which one does
    not change the count), so duplicates of the same object in the same group are not
    counted. Counting per group rather than once per GT is what makes the paper's "No-NMS"
    column an upper bound: any box set kept by an NMS is a subset of the raw detections, so
    its count in every group is at most that of the raw detections. (A single positive per GT
    would give no-NMS and standard NMS the same top-scoring box.) For the top group the count
    is the number of GTs recalled at IoU >= 0.9, the recall the paper quotes in §4.1.

    Args:
        pred_boxes (Boxes, Tensor[N, 4] or ndarray): XYXY detections kept by the method (no
            NMS, standard NMS, IoU-guided NMS, ...) for one image and class.
        gt_boxes (Boxes, Tensor[G, 4] or ndarray): XYXY ground truth of that image and class.
        bin_edges (sequence of float): B + 1 increasing edges; groups are
            [e0, e1), ..., [e_{B-1}, e_B] (the last one closed).

    Returns:
        ndarray[B], int64: count of positives in each group.
    """
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
        raise ValueError(f"bin_edges must be at least 2 increasing values, got {bin_edges}")
    iou, gt_idx = match_detections_to_gt(pred_boxes, gt_boxes)
    iou, gt_idx = iou.double().numpy(), gt_idx.numpy()
    inside = (gt_idx >= 0) & (iou >= edges[0]) & (iou <= edges[-1])
    bins = np.searchsorted(edges, iou[inside], side="right") - 1
    bins = np.minimum(bins, edges.size - 2)  # IoU == last edge goes to the last group
    pairs = np.unique(np.stack([gt_idx[inside], bins], axis=1), axis=0)
    return np.bincount(pairs[:, 1], minlength=edges.size - 1).astype(np.int64)


def _save(figure: Figure, path: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def plot_score_vs_iou(
    ious: ArrayLike,
    scores: ArrayLike,
    path: str,
    title: str = "",
    min_iou: float = 0.5,
    ylabel: str = "classification confidence",
) -> float:
    """Scatter of a confidence against the IoU with the matched GT (IoU-Net Fig. 2).

    Only detections with IoU > min_iou are drawn; the Pearson r over them (see
    :func:`localization_correlation`) is written in the title. Rendered with the Agg canvas,
    without pyplot.

    Args:
        ious (Tensor[N] or array): IoU of each detection with its matched GT.
        scores (Tensor[N] or array): classification confidence (Fig. 2a) or predicted IoU
            (Fig. 2b, with `ylabel="localization confidence"`).
        path (str): PNG file to write (parent folders are created).
        title (str): first line of the title.
        min_iou (float): IoU threshold of the detections shown.
        ylabel (str): label of the y axis.

    Returns:
        float: the Pearson r shown in the title.
    """
    r = localization_correlation(ious, scores, min_iou)
    ious, scores = _as_array(ious, "ious"), _as_array(scores, "scores")
    keep = ious > min_iou
    figure = Figure(figsize=(5, 4.5))
    ax = figure.subplots()
    ax.scatter(ious[keep], scores[keep], s=3, alpha=0.4, linewidths=0)
    ax.set_xlim(min_iou, 1.0)
    ax.set_xlabel("IoU with ground truth")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\nPearson r = {r:.3f} (n = {int(keep.sum())})".lstrip("\n"))
    figure.tight_layout()
    _save(figure, path)
    return r


def plot_positives_by_iou(
    counts_per_method: Mapping[str, Sequence[int]],
    path: str,
    bin_edges: Sequence[float] = IOU_BIN_EDGES,
    title: str = "",
) -> None:
    """Grouped bars of the positives per IoU group, one bar per method (IoU-Net Fig. 3).

    Args:
        counts_per_method (Mapping[str, sequence of int]): method name (e.g. "No-NMS", "NMS",
            "IoU-NMS") -> B counts from :func:`positives_by_iou`, summed over images.
        path (str): PNG file to write (parent folders are created).
        bin_edges (sequence of float): the B + 1 edges the counts were made with.
        title (str): title of the plot.
    """
    num_bins = len(bin_edges) - 1
    for name, counts in counts_per_method.items():
        if len(counts) != num_bins:
            raise ValueError(f"{name!r} has {len(counts)} counts, expected {num_bins}")
    if not counts_per_method:
        raise ValueError("counts_per_method is empty")
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    width = 0.8 / len(counts_per_method)
    centers = np.arange(num_bins)
    for i, (name, counts) in enumerate(counts_per_method.items()):
        offset = (i - (len(counts_per_method) - 1) / 2) * width
        ax.bar(centers + offset, np.asarray(counts), width, label=name)
    ax.set_xticks(centers)
    ax.set_xticklabels([f"{lo:g}-{hi:g}" for lo, hi in zip(bin_edges[:-1], bin_edges[1:])])
    ax.set_xlabel("IoU with matched ground truth")
    ax.set_ylabel("number of positive boxes")
    ax.legend()
    if title:
        ax.set_title(title)
    figure.tight_layout()
    _save(figure, path)
