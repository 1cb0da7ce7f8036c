"""Grid points, extended region mapping, heatmap targets and point-guided box decoding of the
grid branch (Grid R-CNN; CPM R-CNN §3.1-3.2), as pure tensor functions.

A box carries a sqrt(G) x sqrt(G) grid of points, borders included (G = 9: its corners, the
centres of its borders and its centre); point k = row * sqrt(G) + col. The grid branch of a
stage predicts, for a RoI, one S x S heatmap per point over the RoI's *mapped region*: the RoI
scaled by the stage's mapping ratio r about its centre (Grid R-CNN's extended region mapping is
r = 2; CPM R-CNN's Cascade Mapping Module uses (2, 1.5, 1.25) over its stages). As in
mmdetection's Grid R-CNN (the Grid R-CNN Plus heatmaps, which the paper's Grid R-CNN numbers come
from), each point's S x S heatmap covers only its own half of the mapped region, in width and in
height (:func:`point_regions`): the left half for the points of the left border, the middle half
for the inner columns, ... so that a cell is 1 / (2 S) of the region. Heatmap pixel (i, j) of a
point whose region is (x0, y0, x1, y1) covers the cell centred at
(x0 + (j + 0.5) (x1 - x0) / S, y0 + (i + 0.5) (y1 - y0) / S).

Shape legend:
    R: RoIs over the batch
    G: grid points per box; s = sqrt(G) points per border
    S: heatmap side (28 in the paper)

Boxes are XYXY in absolute pixels of the network input.
"""

import math

import torch
import torch.nn.functional as F

__all__ = [
    "grid_point_layout",
    "grid_points",
    "mapped_regions",
    "point_regions",
    "image_to_heatmap",
    "heatmap_to_image",
    "grid_heatmap_targets",
    "decode_grid_heatmaps",
    "grid_heatmap_loss",
]

# A region side below this (pixels) is treated as this, so that degenerate RoIs give finite
# coordinates (and no positive target pixel) instead of a division by zero.
_MIN_SIDE = 1e-4


def grid_point_layout(num_points: int) -> torch.Tensor:
    """Relative position of each grid point in its box.

    Args:
        num_points (int): G, a square >= 4.

    Returns:
        Tensor[G, 2]: (u, v) in [0, 1]^2: point k = row * s + col sits at
        (col / (s - 1), row / (s - 1)) of the box's width and height.
    """
    side = math.isqrt(num_points)
    if num_points < 4 or side * side != num_points:
        raise ValueError(f"num_points must be a square >= 4, got {num_points}")
    # cpu: G values, moved to the boxes' device by the callers (`.to(boxes)`)
    steps = torch.arange(side, dtype=torch.float32) / (side - 1)
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=1)


def grid_points(boxes: torch.Tensor, num_points: int) -> torch.Tensor:
    """The G grid points of each box.

    Args:
        boxes (Tensor[R, 4]): XYXY.
        num_points (int): G.

    Returns:
        Tensor[R, G, 2]: (x, y) of each point.
    """
    layout = grid_point_layout(num_points).to(boxes)
    origin, size = boxes[:, None, :2], (boxes[:, 2:] - boxes[:, :2])[:, None]
    return origin + layout[None] * size


def mapped_regions(rois: torch.Tensor, ratio: float) -> torch.Tensor:
    """The region a RoI's heatmaps cover: the RoI scaled by `ratio` about its centre.

    Args:
        rois (Tensor[R, 4]): XYXY.
        ratio (float): mapping ratio r >= 1 (width and height are multiplied by r).

    Returns:
        Tensor[R, 4]: XYXY regions, e.g. r = 2 maps (10, 20, 30, 60) to (0, 0, 40, 80).
    """
    if ratio < 1:
        raise ValueError(f"mapping ratio must be >= 1, got {ratio}")
    centre = 0.5 * (rois[:, :2] + rois[:, 2:])
    half = 0.5 * ratio * (rois[:, 2:] - rois[:, :2])
    return torch.cat([centre - half, centre + half], dim=1)


def point_regions(rois: torch.Tensor, ratio: float, num_points: int) -> torch.Tensor:
    """The region each grid point's heatmap covers: half of the RoI's mapped region in width and
    height, starting at clamp(u - 1/4, 0, 1/2) of it for a point at relative position u (the
    border points get the outer halves, the centre point the middle half).

    Args:
        rois (Tensor[R, 4]): XYXY.
        ratio (float): mapping ratio r >= 1.
        num_points (int): G.

    Returns:
        Tensor[R, G, 4]: XYXY; e.g. r = 2, G = 9, RoI (10, 20, 30, 60) (mapped region
        (0, 0, 40, 80)): point 0 (top-left) (0, 0, 20, 40), point 4 (centre) (10, 20, 30, 60),
        point 8 (bottom-right) (20, 40, 40, 80).
    """
    region = mapped_regions(rois, ratio)
    start = (grid_point_layout(num_points).to(rois) - 0.25).clamp(0.0, 0.5)  # (G, 2)
    size = (region[:, 2:] - region[:, :2])[:, None]  # (R, 1, 2)
    origin = region[:, None, :2] + start[None] * size
    return torch.cat([origin, origin + 0.5 * size], dim=2)


def _origin_and_cell(regions: torch.Tensor, size: int):
    origin = regions[..., :2]
    cell = (regions[..., 2:] - regions[..., :2]).clamp(min=_MIN_SIDE) / size
    return origin, cell


def image_to_heatmap(points: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """Image points -> continuous heatmap coordinates (column, row) of their regions' maps,
    where integer values are pixel centres.

    Args:
        points (Tensor[R, G, 2]): (x, y) in the image.
        regions (Tensor[R, G, 4]): the region of each point's map (:func:`point_regions`),
            XYXY.
        size (int): S.

    Returns:
        Tensor[R, G, 2]: (j, i) with j = (x - x0) / (w / S) - 0.5, likewise i.
    """
    origin, cell = _origin_and_cell(regions, size)
    return (points - origin) / cell - 0.5


def heatmap_to_image(coords: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`image_to_heatmap`: heatmap (column, row) -> image (x, y).

    Args:
        coords (Tensor[R, G, 2]): (j, i) heatmap coordinates.
        regions (Tensor[R, G, 4]): the region of each point's map, XYXY.
        size (int): S.

    Returns:
        Tensor[R, G, 2]: (x, y) in the image.
    """
    origin, cell = _origin_and_cell(regions, size)
    return origin + (coords + 0.5) * cell


def grid_heatmap_targets(
    gt_boxes: torch.Tensor,
    rois: torch.Tensor,
    ratio: float,
    num_points: int,
    size: int,
    radius: float,
) -> torch.Tensor:
    """Binary heatmap targets: 1 on the pixels whose centre lies within `radius` cells of the
    GT box's grid point (a disc, as Grid R-CNN), 0 elsewhere. A point outside its map's region
    has no positive pixel beyond the disc's part inside the map.

    Args:
        gt_boxes (Tensor[R, 4]): the GT box of each RoI, XYXY.
        rois (Tensor[R, 4]): the RoIs, XYXY.
        ratio (float): mapping ratio of the stage.
        num_points (int): G.
        size (int): S.
        radius (float): disc radius in heatmap cells, > 0.

    Returns:
        Tensor[R, G, S, S]: targets in {0, 1}, float.
    """
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    regions = point_regions(rois, ratio, num_points)
    coords = image_to_heatmap(grid_points(gt_boxes, num_points), regions, size)
    pixels = torch.arange(size, dtype=coords.dtype, device=coords.device)
    dj = pixels[None, None, None, :] - coords[..., 0, None, None]
    di = pixels[None, None, :, None] - coords[..., 1, None, None]
    return (dj.square() + di.square() <= radius * radius).to(coords.dtype)


def decode_grid_heatmaps(logits: torch.Tensor, rois: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boxes from heatmaps (Grid R-CNN's decoding): each point is its heatmap's most probable
    pixel, mapped back to the image; each border is the mean of the coordinates of the points
    on it, weighted by their probabilities (x0 from the left column of the grid, y0 from the
    top row, ...).

    Args:
        logits (Tensor[R, G, S, S]): heatmap logits.
        rois (Tensor[R, 4]): the RoIs the heatmaps were predicted for, XYXY.
        ratio (float): mapping ratio of the stage.

    Returns:
        Tensor[R, 4]: XYXY boxes (not clipped; no gradient through the argmax); x0 <= x1 and
        y0 <= y1, since the left points' regions lie left of the right points' ones.
    """
    num_rois, num_points, size = logits.shape[0], logits.shape[1], logits.shape[-1]
    side = math.isqrt(num_points)
    flat = logits.reshape(num_rois, num_points, size * size)
    best_logit, best = flat.max(dim=2)
    prob = best_logit.sigmoid()
    coords = torch.stack([best % size, torch.div(best, size, rounding_mode="floor")], dim=2)
    regions = point_regions(rois, ratio, num_points)
    points = heatmap_to_image(coords.to(rois.dtype), regions, size)
    col = torch.arange(num_points, device=logits.device) % side
    row = torch.div(torch.arange(num_points, device=logits.device), side, rounding_mode="floor")
    borders = [(col == 0, 0), (row == 0, 1), (col == side - 1, 0), (row == side - 1, 1)]
    box = []
    for on_border, axis in borders:
        w = prob[:, on_border].to(rois.dtype)
        box.append((w * points[:, on_border, axis]).sum(1) / w.sum(1).clamp(min=1e-12))
    x0, y0, x1, y1 = box  # borders decoded independently may cross: order them
    return torch.stack(
        [torch.min(x0, x1), torch.min(y0, y1), torch.max(x0, x1), torch.max(y0, y1)], 1
    )


def grid_heatmap_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the heatmaps, averaged over all pixels (L_BCE of eq. 2).

    Args:
        logits (Tensor[R, G, S, S]): heatmap logits.
        targets (Tensor[R, G, S, S]): :func:`grid_heatmap_targets`.

    Returns:
        Tensor[]: the mean loss; 0 (connected to `logits`) when R = 0.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits, targets)
