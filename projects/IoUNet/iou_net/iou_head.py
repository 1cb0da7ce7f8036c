"""The IoU predictor of IoU-Net (§3.1, §3.4) and the branch that trains and queries it.

`FCIoUHead` maps pooled RoI features to a normalised IoU per class ("a two-layer feedforward
network", "class-aware IoU predictors"). `IoUBranch` owns a pooler (Precise RoI Pooling by
default) and a head: it computes the IoU loss on jittered GT boxes in training and the
predicted IoU of given boxes at inference, differentiably w.r.t. the box coordinates. The
IoU-Net ROI heads and the standalone IoU-Net both use it.

Shape legend:
    N: images; R: boxes over the batch (n: of one image)
    C, S: channels and side of the pooled features
    K: foreground classes

Boxes are XYXY in absolute pixels of the network input.
"""
from typing import Callable, Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.registry import Registry
from torch import nn

from d2align.modeling import D2AlignStandardROIHeads

from .iou_targets import decode_iou, encode_iou, iou_prediction_loss, sample_iou_training_boxes

__all__ = ["ROI_IOU_HEAD_REGISTRY", "FCIoUHead", "IoUBranch", "build_iou_head"]

ROI_IOU_HEAD_REGISTRY = Registry("ROI_IOU_HEAD")
ROI_IOU_HEAD_REGISTRY.__doc__ = """Heads mapping pooled RoI features (R, C, S, S) to a
normalised IoU per class (R, K). Built by `build_iou_head(cfg, input_shape)`."""


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
    ):
        """
        Args:
            input_shape (ShapeSpec): channels, height, width of the pooled features.
            num_classes (int): K, one predicted IoU per foreground class.
            fc_dims (list[int]): widths of the hidden FC layers (paper: two of 1024).
            fc_init_std, pred_init_std (float): std of the zero-mean Gaussian initialising the
                hidden layers and the output layer (paper: "0.01 or 0.001"); biases are 0.
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
        self.iou_pred = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.iou_pred.weight, std=pred_init_std)
        nn.init.zeros_(self.iou_pred.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "fc_dims": list(cfg.MODEL.IOU_NET.FC_DIMS),
            "fc_init_std": cfg.MODEL.IOU_NET.FC_INIT_STD,
            "pred_init_std": cfg.MODEL.IOU_NET.PRED_INIT_STD,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor[R, C, S, S]): pooled features.

        Returns:
            Tensor[R, K]: normalised predicted IoU (see `iou_targets.encode_iou`).
        """
        return self.iou_pred(self.fcs(torch.flatten(x, 1)))


def build_iou_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The FC IoU head (the only registered one: `FCIoUHead`)."""
    return ROI_IOU_HEAD_REGISTRY.get("FCIoUHead")(cfg, input_shape)


def _check(ok: bool, key: str, value, requirement: str) -> None:
    if not ok:
        raise ValueError(f"MODEL.IOU_NET.{key} = {value!r}: {requirement}")


class IoUBranch(nn.Module):
    """Pooler + IoU head: the IoU loss in training, predicted IoUs at inference."""

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        pooler: nn.Module,
        head: nn.Module,
        loss_weight: float,
        loss_beta: float,
        num_samples: int,
        jitter: Dict,
    ):
        """
        Args:
            in_features (list[str]): feature maps pooled from, finest first.
            pooler (nn.Module): `ROIPooler`-like; `PrRoIPooler` for gradients w.r.t. boxes.
            head (nn.Module): (R, C, S, S) -> (R, K) normalised IoU.
            loss_weight (float): weight of the IoU loss.
            loss_beta (float): smooth-L1 beta.
            num_samples (int): jittered boxes per image.
            jitter (dict): arguments of `sample_jittered_boxes`; `min_iou` (Omega_train) also
                sets the IoU normalisation.
        """
        super().__init__()
        self.in_features = in_features
        self.pooler = pooler
        self.head = head
        self.loss_weight = loss_weight
        self.loss_beta = loss_beta
        self.num_samples = num_samples
        self.jitter = dict(jitter)
        self.min_iou = self.jitter["min_iou"]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        c = cfg.MODEL.IOU_NET
        j = c.JITTER
        _check(c.IOU_LOSS_WEIGHT >= 0, "IOU_LOSS_WEIGHT", c.IOU_LOSS_WEIGHT, "must be >= 0")
        _check(c.IOU_LOSS_BETA >= 0, "IOU_LOSS_BETA", c.IOU_LOSS_BETA, "must be >= 0")
        _check(
            c.NUM_JITTER_SAMPLES >= 1, "NUM_JITTER_SAMPLES", c.NUM_JITTER_SAMPLES, "must be >= 1"
        )
        _check(0 < j.MIN_IOU < 1, "JITTER.MIN_IOU", j.MIN_IOU, "must be in (0, 1)")
        _check(j.NUM_BINS >= 1, "JITTER.NUM_BINS", j.NUM_BINS, "must be >= 1")
        _check(j.SHIFT_RANGE >= 0, "JITTER.SHIFT_RANGE", j.SHIFT_RANGE, "must be >= 0")
        for key in ("SCALE_RANGE", "ASPECT_RANGE"):
            value = tuple(j[key])
            ok = len(value) == 2 and 0 < value[0] <= value[1]
            _check(ok, f"JITTER.{key}", value, "must be (low, high) with 0 < low <= high")
        pooler, channels = D2AlignStandardROIHeads.build_pooler(
            input_shape,
            list(c.IN_FEATURES),
            c.POOLER_RESOLUTION,
            c.POOLER_SAMPLING_RATIO,
            c.POOLER_TYPE,
        )
        shape = ShapeSpec(channels=channels, height=c.POOLER_RESOLUTION, width=c.POOLER_RESOLUTION)
        return {
            "in_features": list(c.IN_FEATURES),
            "pooler": pooler,
            "head": build_iou_head(cfg, shape),
            "loss_weight": c.IOU_LOSS_WEIGHT,
            "loss_beta": c.IOU_LOSS_BETA,
            "num_samples": c.NUM_JITTER_SAMPLES,
            "jitter": {
                "min_iou": j.MIN_IOU,
                "num_bins": j.NUM_BINS,
                "scale_range": tuple(j.SCALE_RANGE),
                "shift_range": j.SHIFT_RANGE,
                "aspect_range": tuple(j.ASPECT_RANGE),
            },
        }

    def losses(
        self, features: Dict[str, torch.Tensor], targets: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """The IoU loss on jittered GT boxes of every image (§3.1).

        Args:
            features (dict[str, Tensor]): backbone outputs, (N, C, H_l, W_l) each.
            targets (list[Instances]): N images with `gt_boxes` and `gt_classes`.

        Returns:
            dict: {"loss_iou": Tensor[]}, already multiplied by the loss weight.
        """
        with torch.no_grad():
            samples = sample_iou_training_boxes(targets, self.num_samples, self.jitter)
        maps = [features[f] for f in self.in_features]
        x = self.pooler(maps, [s.proposal_boxes for s in samples])
        pred = self.head(x)
        classes = torch.cat([s.gt_classes for s in samples])
        iou_targets = encode_iou(torch.cat([s.gt_ious for s in samples]), self.min_iou)
        loss = iou_prediction_loss(pred, classes, iou_targets.to(pred.dtype), self.loss_beta)
        return {"loss_iou": self.loss_weight * loss}

    def predict(
        self, features: List[torch.Tensor], boxes: List[Boxes], classes: List[torch.Tensor]
    ) -> torch.Tensor:
        """Predicted IoU of boxes for their classes, differentiable w.r.t. `Boxes.tensor`
        (with a PrRoIPool pooler).

        Args:
            features (list[Tensor]): the `in_features` maps, (N, C, H_l, W_l) each.
            boxes (list[Boxes]): N lists of XYXY boxes.
            classes (list[Tensor]): N int64 tensors, the class of each box.

        Returns:
            Tensor[R]: predicted IoU (in IoU units) of the concatenated boxes.
        """
        pred = self.head(self.pooler(features, boxes))
        chosen = pred.gather(1, torch.cat(classes)[:, None]).squeeze(1)
        return decode_iou(chosen, self.min_iou)

    def iou_fn_of_image(
        self, features: Dict[str, torch.Tensor], image_index: int
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A predictor for the boxes of one image: `fn(boxes Tensor[n, 4], classes Tensor[n])
        -> Tensor[n]` predicted IoU, differentiable w.r.t. `boxes`."""
        maps = [features[f][image_index : image_index + 1] for f in self.in_features]

        def iou_fn(boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            return self.predict(maps, [Boxes(boxes)], [classes])

        return iou_fn
