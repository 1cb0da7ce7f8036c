"""The box pooler of every d2align ROI head and extra RoI branch, PrRoIPool or detectron2's.

:func:`build_box_pooler` turns backbone output shapes and pooler settings into a pooler
(:func:`d2align.ops.build_roi_pooler`: :class:`~d2align.ops.PrRoIPooler` for
``pooler_type="PrRoIPool"``, detectron2's ``ROIPooler`` for any other type) and the shape of
its output, refusing feature names the backbone does not have and maps of different widths.
:func:`build_roi_box_pooler` reads those settings from the box-head keys of a config
(``MODEL.ROI_HEADS.IN_FEATURES``, ``MODEL.ROI_BOX_HEAD.POOLER_*``), as detectron2's
``StandardROIHeads._init_box_head`` does.

Shapes: the pooler maps N images' feature maps (N, C, H_l, W_l) and R boxes over the batch
(XYXY, absolute input pixels) to (R, C, S, S), S = `resolution`.
"""

from typing import Dict, List, Tuple

from detectron2.layers import ShapeSpec
from torch import nn

from ..config import check_config
from ..ops import build_roi_pooler

__all__ = ["build_box_pooler", "build_roi_box_pooler"]


def build_box_pooler(
    input_shape: Dict[str, ShapeSpec],
    in_features: List[str],
    resolution: int,
    sampling_ratio: int,
    pooler_type: str,
    features_key: str = "in_features",
) -> Tuple[nn.Module, int]:
    """A pooler over `in_features` and the (common) channel count of its output.

    Args:
        input_shape (dict[str, ShapeSpec]): shapes of the backbone outputs.
        in_features (list[str]): names of the feature maps pooled from, finest first.
        resolution (int): side S of the pooled features.
        sampling_ratio (int): as `ROIPooler`'s (ignored by PrRoIPool).
        pooler_type (str): "PrRoIPool" or any `ROIPooler` type ("ROIAlignV2", ...).
        features_key (str): the config key `in_features` comes from, named in the errors
            (e.g. "MODEL.ROI_HEADS.IN_FEATURES").

    Returns:
        (nn.Module, int): the pooler and C, the channel count of its output.

    Raises:
        ValueError: a feature is not among the backbone outputs, or the features differ in
            channels (one pooler and one head serve all levels).
    """
    missing = [f for f in in_features if f not in input_shape]
    check_config(
        not missing,
        features_key,
        list(in_features),
        f"features {missing} are not among the backbone outputs {sorted(input_shape)}",
    )
    channels = sorted({input_shape[f].channels for f in in_features})
    check_config(
        len(channels) == 1,
        features_key,
        list(in_features),
        f"the features must have one channel count, got {channels}",
    )
    pooler = build_roi_pooler(
        output_size=resolution,
        scales=[1.0 / input_shape[f].stride for f in in_features],
        sampling_ratio=sampling_ratio,
        pooler_type=pooler_type,
    )
    return pooler, channels[0]


def build_roi_box_pooler(cfg, input_shape: Dict[str, ShapeSpec]) -> Tuple[nn.Module, ShapeSpec]:
    """The box pooler of the ROI heads' box branch, from `MODEL.ROI_HEADS.IN_FEATURES` and
    `MODEL.ROI_BOX_HEAD.POOLER_{RESOLUTION, SAMPLING_RATIO, TYPE}`.

    Returns:
        (nn.Module, ShapeSpec): the pooler and the shape (C, S, S) of the pooled features, the
        input shape of the box head.
    """
    resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    pooler, channels = build_box_pooler(
        input_shape,
        list(cfg.MODEL.ROI_HEADS.IN_FEATURES),
        resolution,
        cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        features_key="MODEL.ROI_HEADS.IN_FEATURES",
    )
    return pooler, ShapeSpec(channels=channels, height=resolution, width=resolution)
