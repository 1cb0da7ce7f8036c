"""The grid branch g_j of one Cascade Mapping stage (§3.1, after Grid R-CNN): 14x14 RoI
features -> a conv tower down to 7x7 -> two 2x deconvolutions -> one 28x28 heatmap per grid
point. The 7x7 tower output (g' of eq. 3, "g without the final 4x upsampling") is also the
input of the IoU Scoring Module.

Shape legend:
    R: RoIs over the batch
    C: channels of the pooled features; G: grid points; P: channels per point
    S: pooled side (14); the tower works at S / 2, the heatmaps are 2 S wide
"""

import math

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .config import check_cpm_rcnn_config

__all__ = ["GridHead"]


class GridHead(nn.Module):
    """Conv tower (`num_convs` plain 3x3 convs of G x P channels, padding 1, the first of
    stride 2, each followed by the norm and ReLU), then two grouped 4x4 deconvolutions of
    stride 2 (one group per point, so that each heatmap has its own channels), as Grid R-CNN's
    head without its feature fusion (mmdetection's `GridHead` and the official CPM R-CNN code
    use the same tower).

    Every output cell of the tower depends on every one of the S x S input positions once the
    tower has enough convs (two suffice for S = 14): the stride-2 conv reads rows 2o - 1, 2o,
    2o + 1, so no input row or column is skipped. (A dilation-2 tower, which an earlier version
    had, reads only the even positions in its first conv and keeps four sub-grids apart.)"""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_points: int,
        point_channels: int,
        num_convs: int,
        norm: str = "GN",
        prior_prob: float = 0.01,
    ):
        """
        Args:
            input_shape (ShapeSpec): channels C and side S of the pooled RoI features.
            num_points (int): G.
            point_channels (int): P; the tower has G x P channels.
            num_convs (int): convs of the tower, >= 1.
            norm (str): "GN" (G groups, one per point) or "" (none).
            prior_prob (float): initial heatmap probability (bias of the last layer).
        """
        super().__init__()
        if norm not in ("", "GN"):
            raise ValueError(f"norm must be '' or 'GN', got {norm!r}")
        self.num_points = num_points
        width = num_points * point_channels
        layers, in_channels = [], input_shape.channels
        for i in range(num_convs):
            conv = nn.Conv2d(in_channels, width, 3, stride=2 if i == 0 else 1, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv] + self._norm(norm, width) + [nn.ReLU(inplace=True)]
            in_channels = width
        self.tower = nn.Sequential(*layers)
        deconv1 = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1, groups=num_points)
        deconv2 = nn.ConvTranspose2d(width, num_points, 4, stride=2, padding=1, groups=num_points)
        for deconv in (deconv1, deconv2):
            nn.init.normal_(deconv.weight, std=0.001)
            nn.init.zeros_(deconv.bias)
        nn.init.constant_(deconv2.bias, -math.log((1 - prior_prob) / prior_prob))
        self.upsample = nn.Sequential(
            deconv1, *self._norm(norm, width), nn.ReLU(inplace=True), deconv2
        )
        side = input_shape.height
        self.feature_shape = ShapeSpec(channels=width, height=side // 2, width=side // 2)

    def _norm(self, norm: str, channels: int):
        # GroupNorm with one group per grid point (the tower's channels are G x P)
        return [nn.GroupNorm(self.num_points, channels)] if norm == "GN" else []

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        check_cpm_rcnn_config(cfg)
        g = cfg.MODEL.CPM_RCNN.GRID_HEAD
        return {
            "input_shape": input_shape,
            "num_points": g.NUM_POINTS,
            "point_channels": g.POINT_CHANNELS,
            "num_convs": g.NUM_CONVS,
            "norm": g.NORM,
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """g': Tensor[R, C, S, S] pooled features -> Tensor[R, G x P, S/2, S/2]."""
        return self.tower(x)

    def heatmaps(self, features: torch.Tensor) -> torch.Tensor:
        """Tensor[R, G x P, S/2, S/2] tower features -> Tensor[R, G, 2 S, 2 S] heatmap logits."""
        return self.upsample(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor[R, C, S, S] pooled features -> Tensor[R, G, 2 S, 2 S] heatmap logits."""
        return self.heatmaps(self.features(x))
