"""Multi-level (FPN) Precise RoI Pooling with the interface of detectron2's ``ROIPooler``.

``ROIPooler``'s pooler types are a fixed list, so :func:`build_roi_pooler` is the hook through
which a config key (e.g. ``MODEL.ROI_BOX_HEAD.POOLER_TYPE: "PrRoIPool"``) selects
:class:`PrRoIPooler`; any other type builds detectron2's own ``ROIPooler``.

Shapes: N images, C channels, R boxes in total over the batch, (ph, pw) = output_size.
"""

import math
from typing import List, Tuple, Union

import torch
from detectron2.modeling.poolers import (
    ROIPooler,
    assign_boxes_to_levels,
    convert_boxes_to_pooler_format,
)
from detectron2.structures import Boxes
from torch import nn

from ._ext import require_ext
from .prroi_pool import _check_inputs, _prroi_pool_unchecked, roi_dtype

__all__ = ["PrRoIPooler", "build_roi_pooler"]

PRROI_POOLER_TYPE = "PrRoIPool"


class PrRoIPooler(nn.Module):
    """Pools each box from one FPN level with :class:`PrRoIPool`; levels are assigned exactly as
    detectron2's ``ROIPooler`` does (FPN paper eq. 1, through detectron2's own
    ``assign_boxes_to_levels``). The output is differentiable w.r.t. the features and the box
    coordinates (``Boxes.tensor``), which IoU-Net's optimization-based refinement needs; the
    level of a box is piecewise constant in its size, so it carries no gradient.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: List[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        """
        Args:
            output_size (int or (int, int)): (ph, pw) bins per box.
            scales (list[float]): 1 / stride of each feature map, a decreasing geometric sequence
                with factor 1/2 (strides are powers of 2), as for ``ROIPooler``.
            sampling_ratio (int): ignored (PrRoI Pooling integrates exactly); kept so that the
                arguments are those of ``ROIPooler``.
            pooler_type (str): must be "PrRoIPool".
            canonical_box_size (int): box size in pixels (sqrt of area) placed on
                `canonical_level` (224 in the FPN paper).
            canonical_level (int): level of a canonically-sized box (4, i.e. stride 16).
        """
        super().__init__()
        if pooler_type != PRROI_POOLER_TYPE:
            raise ValueError(
                f"PrRoIPooler: pooler_type must be '{PRROI_POOLER_TYPE}', got {pooler_type!r}"
            )
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or not all(isinstance(s, int) for s in output_size):
            raise ValueError(f"PrRoIPooler: output_size must be an int or pair, got {output_size}")
        self.output_size = tuple(output_size)
        self.scales = [float(s) for s in scales]

        min_level, max_level = -math.log2(scales[0]), -math.log2(scales[-1])
        if not all(math.isclose(v, round(v)) for v in (min_level, max_level)):
            raise ValueError(
                f"PrRoIPooler: feature map strides must be powers of 2, got scales {scales}"
            )
        self.min_level, self.max_level = int(round(min_level)), int(round(max_level))
        if len(scales) != self.max_level - self.min_level + 1 or self.min_level < 0:
            raise ValueError(f"PrRoIPooler: scales {scales} do not form a pyramid")
        if canonical_box_size <= 0:
            raise ValueError(
                f"PrRoIPooler: canonical_box_size must be > 0, got {canonical_box_size}"
            )
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """
        Args:
            x (list[Tensor]): one (N, C, H_l, W_l) feature map per scale, finest first.
            box_lists (list[Boxes]): N Boxes, XYXY in absolute image pixels.

        Returns:
            Tensor: (R, C, ph, pw), boxes in the order of the concatenated `box_lists`.
        """
        if not isinstance(x, list) or not isinstance(box_lists, list):
            raise TypeError("PrRoIPooler: arguments must be lists")
        if len(x) != len(self.scales):
            raise ValueError(f"PrRoIPooler: expected {len(self.scales)} feature maps, got {len(x)}")
        if len(box_lists) != x[0].size(0):
            raise ValueError(
                f"PrRoIPooler: {len(box_lists)} box lists for a batch of {x[0].size(0)} images"
            )
        dtype, device = x[0].dtype, x[0].device
        if len(box_lists) == 0:
            return torch.zeros((0, x[0].shape[1]) + self.output_size, dtype=dtype, device=device)

        require_ext("prroi_pool", device)
        rois = convert_boxes_to_pooler_format(box_lists).to(dtype=roi_dtype(dtype))
        # one check of all boxes (finite; batch indices are valid by construction) instead of
        # one per level: the pooler is called many times per image by IoU-Net's refinement
        _check_inputs(x[0], rois)
        if len(self.scales) == 1:
            return _prroi_pool_unchecked(x[0], rois, self.output_size, self.scales[0])

        levels = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        output = torch.zeros(
            (rois.shape[0], x[0].shape[1]) + self.output_size, dtype=dtype, device=device
        )
        for level, scale in enumerate(self.scales):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            if inds.numel() == 0:
                continue
            pooled = _prroi_pool_unchecked(x[level], rois[inds], self.output_size, scale)
            output.index_put_((inds,), pooled)
        return output


def build_roi_pooler(
    output_size: Union[int, Tuple[int, int]],
    scales: List[float],
    sampling_ratio: int,
    pooler_type: str,
    canonical_box_size: int = 224,
    canonical_level: int = 4,
) -> nn.Module:
    """A :class:`PrRoIPooler` for ``pooler_type == "PrRoIPool"``, else detectron2's
    ``ROIPooler`` (types "ROIAlign", "ROIAlignV2", "ROIPool", "ROIAlignRotated"); same arguments
    as ``ROIPooler``. ROI heads call this instead of ``ROIPooler(...)`` so that their
    ``POOLER_TYPE`` config key may name either.
    """
    cls = PrRoIPooler if pooler_type == PRROI_POOLER_TYPE else ROIPooler
    return cls(
        output_size=output_size,
        scales=scales,
        sampling_ratio=sampling_ratio,
        pooler_type=pooler_type,
        canonical_box_size=canonical_box_size,
        canonical_level=canonical_level,
    )
