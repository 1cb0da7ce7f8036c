"""Localization-quality (IoU) heads: pooled RoI features -> predicted IoU of each box.

IoU-Net's IoU predictor ("a two-layer feedforward network", one output per class) and CPM
R-CNN's IoU Scoring Module ("three simple fully connected layers") are both an `FCIoUHead`.
Heads are registered in :data:`ROI_IOU_HEAD_REGISTRY` and built by :func:`build_iou_head`
from `MODEL.ROI_IOU_HEAD.NAME`, as detectron2's `build_point_head` reads
`MODEL.POINT_HEAD.NAME`. Their training boxes, targets and loss are in
`d2align.modeling.iou_targets` and `d2align.modeling.losses.iou_prediction_loss`.

Shape legend:
    R: boxes over the batch
    C, H, W: channels and size of the pooled features
    K: foreground classes (1 output per box for a class-agnostic head)
"""

from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

from ..config import check_config

__all__ = ["ROI_IOU_HEAD_REGISTRY", "FCIoUHead", "build_iou_head"]

ROI_IOU_HEAD_REGISTRY = Registry("ROI_IOU_HEAD")
ROI_IOU_HEAD_REGISTRY.__doc__ = """Heads mapping pooled RoI features (R, C, H, W) to a predicted
IoU per class (R, K), or per box (R, 1). Built by `build_iou_head(cfg, input_shape)` from
`MODEL.ROI_IOU_HEAD.NAME`."""


@ROI_IOU_HEAD_REGISTRY.register()
class FCIoUHead(nn.Module):
    """Flatten -> FC + ReLU (per hidden layer) -> linear layer with one output per class."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        fc_dims: List[int],
        fc_init_std: float = 0.01,
        pred_init_std: float = 0.001,
        cls_agnostic: bool = False,
    ):
        """
        Args:
            input_shape (ShapeSpec): channels, height, width of the pooled features.
            num_classes (int): K, one predicted IoU per foreground class.
            fc_dims (list[int]): widths of the hidden FC layers (IoU-Net: two of 1024).
            fc_init_std, pred_init_std (float): std of the zero-mean Gaussian initialising the
                hidden layers and the output layer (IoU-Net: "0.01 or 0.001"); biases are 0.
            cls_agnostic (bool): one output per box instead of one per class.
        """
        super().__init__()
        in_dim = input_shape.channels * (input_shape.height or 1) * (input_shape.width or 1)
        layers = []
        for dim in fc_dims:
            fc = nn.Linear(in_dim, dim)
            nn.init.normal_(fc.weight, std=fc_init_std)
            nn.init.zeros_(fc.bias)
            layers += [fc, nn.ReLU(inplace=True)]
            in_dim = dim
        self.fcs = nn.Sequential(*layers)
        self.iou_pred = nn.Linear(in_dim, 1 if cls_agnostic else num_classes)
        nn.init.normal_(self.iou_pred.weight, std=pred_init_std)
        nn.init.zeros_(self.iou_pred.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        c = cfg.MODEL.ROI_IOU_HEAD
        fc_dims = list(c.FC_DIMS)
        k = "MODEL.ROI_IOU_HEAD."
        check_config(all(d >= 1 for d in fc_dims), k + "FC_DIMS", fc_dims, "widths must be >= 1")
        check_config(c.FC_INIT_STD >= 0, k + "FC_INIT_STD", c.FC_INIT_STD, "must be >= 0")
        check_config(c.PRED_INIT_STD >= 0, k + "PRED_INIT_STD", c.PRED_INIT_STD, "must be >= 0")
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "fc_dims": fc_dims,
            "fc_init_std": c.FC_INIT_STD,
            "pred_init_std": c.PRED_INIT_STD,
            "cls_agnostic": c.CLS_AGNOSTIC,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor[R, C, H, W]): pooled features.

        Returns:
            Tensor[R, K] (Tensor[R, 1] if class-agnostic): predicted IoU, in the units the head
            was trained on (e.g. normalised by `encode_iou`).
        """
        return self.iou_pred(self.fcs(torch.flatten(x, 1)))


def build_iou_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The IoU head named by `MODEL.ROI_IOU_HEAD.NAME`.

    Args:
        cfg (CfgNode): the model's config.
        input_shape (ShapeSpec): shape of the pooled features (C, H, W).

    Raises:
        ValueError: the name is not registered (the message names the key and the choices).
    """
    name = cfg.MODEL.get("ROI_IOU_HEAD", {}).get("NAME")  # None: a config without d2align's keys
    names = sorted(n for n, _ in ROI_IOU_HEAD_REGISTRY)
    check_config(
        name in ROI_IOU_HEAD_REGISTRY,
        "MODEL.ROI_IOU_HEAD.NAME",
        name,
        f"must name a head registered in ROI_IOU_HEAD_REGISTRY, one of {names} "
        "(the key is added by d2align.config.add_d2align_config)",
    )
    return ROI_IOU_HEAD_REGISTRY.get(name)(cfg, input_shape)
