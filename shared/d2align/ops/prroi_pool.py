"""Precise RoI Pooling (PrRoI Pooling; Jiang et al., "Acquisition of Localization Confidence for
Accurate Object Detection", ECCV 2018, Sec. 3.3).

Shapes: N images, C channels, H x W feature map, R RoIs, (ph, pw) = output_size.

Definitions (the same in the C++/CUDA kernels, in :func:`prroi_pool_reference` and below):

* The feature map is a continuous surface (eq. 2): ``f(x, y) = sum_{i,j} IC(x, y, i, j) w[j, i]``
  with ``IC(x, y, i, j) = max(0, 1 - |x - i|) * max(0, 1 - |y - j|)``; pixel ``(i, j)`` sits at
  integer coordinates of the feature grid. Pixels outside the map contribute 0, so the surface
  fades linearly to 0 within one cell outside the map.
* A RoI row ``(batch_idx, x1, y1, x2, y2)`` is a box in image pixels (XYXY absolute, the
  detectron2 convention). A coordinate ``u`` maps to ``u * spatial_scale - 0.5`` on the feature
  grid: the half-pixel offset of detectron2's ``ROIAlign(aligned=True)`` ("ROIAlignV2"), under
  which a pixel's center (integer + 0.5 in scaled image coordinates) sits where its value is.
  A box covering the whole image thus starts and ends half a cell outside the pixel centers.
* The box is split into ``ph x pw`` equal bins; each output is the exact integral of ``f`` over
  its bin divided by the bin's area (eq. 3). No sampling, no quantization, no minimum box size.
* A box of zero (or negative) width or height has zero-area bins: its output is 0 and its
  gradients (to the features and to the coordinates) are 0, never NaN (as the original PrRoI
  code does). Boxes partly or wholly outside the map integrate the faded surface (0 far away).
* Gradients flow to the features and analytically to the box coordinates (eq. 4 and its
  analogues for y1, x2, y2, summed over bins); column 0 (the batch index) gets gradient 0.
"""

import math
from typing import Tuple, Union

import torch
from torch import nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from ._ext import require_ext

__all__ = ["prroi_pool", "PrRoIPool", "prroi_pool_reference", "roi_dtype"]

_OutputSize = Union[int, Tuple[int, int]]


def _pair(output_size: _OutputSize) -> Tuple[int, int]:
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    output_size = tuple(output_size)
    if len(output_size) != 2 or not all(isinstance(s, int) and s > 0 for s in output_size):
        raise ValueError(
            f"prroi_pool: output_size must be a positive int or pair, got {output_size}"
        )
    return output_size


def _check_inputs(input: torch.Tensor, rois: torch.Tensor) -> None:
    if input.dim() != 4:
        raise ValueError(
            f"prroi_pool: input must have shape (N, C, H, W), got {tuple(input.shape)}"
        )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            "prroi_pool: rois must have shape (R, 5) with rows (batch_idx, x1, y1, x2, y2), "
            f"got {tuple(rois.shape)}"
        )
    if rois.dtype not in (input.dtype, roi_dtype(input.dtype)):
        raise TypeError(
            f"prroi_pool: rois must be {roi_dtype(input.dtype)} for input of dtype "
            f"{input.dtype}, got {rois.dtype}"
        )
    if rois.device != input.device:
        raise ValueError(f"prroi_pool: rois on {rois.device} but input on {input.device}")
    if rois.shape[0] == 0:
        return
    batch = rois[:, 0]
    bad_batch = (batch < 0) | (batch >= input.shape[0]) | (batch != batch.floor())
    bad = bad_batch | ~torch.isfinite(rois).all(dim=1)
    if bool(bad.any()):  # one host sync on the common path; details only on failure
        if not bool(torch.isfinite(rois).all()):
            raise ValueError("prroi_pool: rois contain non-finite values (NaN or inf)")
        raise ValueError(
            f"prroi_pool: rois batch indices must be integers in [0, {input.shape[0]}), got "
            f"{batch[bad_batch].unique().tolist()}"
        )


def roi_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the RoIs for features of `input_dtype`: float32 for half precision (boxes
    stay exact under autocast), the features' own otherwise."""
    return torch.float32 if input_dtype in (torch.float16, torch.bfloat16) else input_dtype


class _PrRoIPool(Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale):
        ctx.save_for_backward(input, rois)
        ctx.spatial_scale = spatial_scale
        return torch.ops.d2align.prroi_pool_forward(
            input, rois, spatial_scale, output_size[0], output_size[1]
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, rois = ctx.saved_tensors
        grad_input = grad_rois = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.d2align.prroi_pool_backward_input(
                grad_output, rois, ctx.spatial_scale, list(input.shape)
            )
        if ctx.needs_input_grad[1]:
            grad_rois = torch.ops.d2align.prroi_pool_backward_rois(
                grad_output, input, rois, ctx.spatial_scale
            )
        return grad_input, grad_rois, None, None


def prroi_pool(
    input: torch.Tensor, rois: torch.Tensor, output_size: _OutputSize, spatial_scale: float
) -> torch.Tensor:
    """Precise RoI Pooling (see the module docstring for the exact definition).

    Args:
        input (Tensor): (N, C, H, W) feature map, float32 or float64 (float16/bfloat16 are
            pooled in float32 and cast back).
        rois (Tensor): (R, 5) rows (batch_idx, x1, y1, x2, y2), boxes in image pixels, on the
            device of `input`, of the input's dtype or `roi_dtype(input.dtype)`: float32 for
            float16 / bfloat16 input is what keeps boxes exact (half precision rounds a
            coordinate above 512 px to 0.5 px or worse). Differentiable in x1, y1, x2, y2.
        output_size (int or (int, int)): (ph, pw).
        spatial_scale (float): feature-map size / image size, e.g. 1/16.

    Returns:
        Tensor: (R, C, ph, pw), the average of the bilinear surface over each bin.
    """
    require_ext("prroi_pool", input.device)
    output_size = _pair(output_size)
    _check_inputs(input, rois)
    return _prroi_pool_unchecked(input, rois, output_size, spatial_scale)


def _prroi_pool_unchecked(
    input: torch.Tensor, rois: torch.Tensor, output_size: Tuple[int, int], spatial_scale: float
) -> torch.Tensor:
    """:func:`prroi_pool` for callers that have already validated `input` and `rois` (e.g.
    `PrRoIPooler`, which checks the boxes of all levels once and builds valid batch indices)."""
    if input.dtype in (torch.float16, torch.bfloat16):
        out = _PrRoIPool.apply(input.float(), rois.float(), output_size, float(spatial_scale))
        return out.to(input.dtype)
    return _PrRoIPool.apply(input, rois, output_size, float(spatial_scale))


class PrRoIPool(nn.Module):
    """Module form of :func:`prroi_pool`."""

    def __init__(self, output_size: _OutputSize, spatial_scale: float):
        """
        Args:
            output_size (int or (int, int)): (ph, pw) bins per box.
            spatial_scale (float): feature-map size / image size (1 / stride).
        """
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input (Tensor): (N, C, H, W).
            rois (Tensor): (R, 5) rows (batch_idx, x1, y1, x2, y2) in image pixels.

        Returns:
            Tensor: (R, C, ph, pw).
        """
        return prroi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self):
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )


def _hat_matrix(coords: torch.Tensor, size: int) -> torch.Tensor:
    """(n,) continuous coordinates -> (n, size) interpolation coefficients max(0, 1 - |u - i|)."""
    pixels = torch.arange(size, dtype=coords.dtype, device=coords.device)
    return (1 - (coords[:, None] - pixels[None, :]).abs()).clamp(min=0)


def prroi_pool_reference(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: _OutputSize,
    spatial_scale: float,
    samples_per_cell: int = 64,
) -> torch.Tensor:
    """Slow float64 reference of :func:`prroi_pool` by numerical integration (no gradients).

    Each bin of extent L_x x L_y feature cells is split into n_x x n_y equal sub-rectangles,
    n = max(samples_per_cell, ceil(L * samples_per_cell)), and eq. (2) is evaluated directly at
    their centers (midpoint rule); the bin's output is the mean of those values.

    Error bound: along one axis f is piecewise linear with kinks only at integer coordinates,
    and the midpoint rule is exact on linear pieces; a sub-interval of width h holding a kink
    whose slope jumps by d errs by at most |d| h^2 / 8. With M = max |w|, |d| <= 4M, at most
    floor(L) + 1 kinks per bin and h <= min(1, L) / samples_per_cell, the error of the bin mean
    is at most M / samples_per_cell^2 per axis, hence ``2 M / samples_per_cell^2`` in 2D
    (tensor-product rule: errors of the two axes add).

    Args:
        input (Tensor): (N, C, H, W).
        rois (Tensor): (R, 5) rows (batch_idx, x1, y1, x2, y2) in image pixels.
        output_size (int or (int, int)): (ph, pw).
        spatial_scale (float): feature-map size / image size.
        samples_per_cell (int): midpoint-rule samples per feature cell (and per bin at least).

    Returns:
        Tensor: (R, C, ph, pw), float64.
    """
    ph, pw = _pair(output_size)
    x = input.detach().to(torch.float64)
    boxes = rois.detach().to(torch.float64)
    _, channels, height, width = x.shape
    out = torch.zeros((boxes.shape[0], channels, ph, pw), dtype=torch.float64, device=x.device)
    for r, (b, x1, y1, x2, y2) in enumerate(boxes.tolist()):
        x0, y0 = x1 * spatial_scale - 0.5, y1 * spatial_scale - 0.5
        bin_w, bin_h = (x2 - x1) * spatial_scale / pw, (y2 - y1) * spatial_scale / ph
        if not (bin_w > 0 and bin_h > 0):
            continue
        nx = max(samples_per_cell, math.ceil(bin_w * samples_per_cell))
        ny = max(samples_per_cell, math.ceil(bin_h * samples_per_cell))
        plane = x[int(b)]
        for k in range(pw):
            xs = x0 + bin_w * (
                k + (torch.arange(nx, dtype=torch.float64, device=x.device) + 0.5) / nx
            )
            hx = _hat_matrix(xs, width)  # (nx, W)
            for row in range(ph):
                offsets = torch.arange(ny, dtype=torch.float64, device=x.device) + 0.5
                ys = y0 + bin_h * (row + offsets / ny)
                hy = _hat_matrix(ys, height)  # (ny, H)
                samples = hy @ plane @ hx.T  # (C, ny, nx): f at the sub-rectangle centers
                out[r, :, row, k] = samples.mean(dim=(1, 2))
    return out
