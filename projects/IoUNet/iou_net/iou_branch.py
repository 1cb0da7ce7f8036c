"""The branch of IoU-Net that trains and queries its IoU predictor (§3.1, §3.4).

`IoUBranch` owns a pooler (Precise RoI Pooling by default) and an IoU head from the shared
`d2align.modeling` (`FCIoUHead`: "a two-layer feedforward network", "class-aware IoU
predictors", chosen by `MODEL.ROI_IOU_HEAD.NAME`): it computes the IoU loss on jittered GT
boxes in training and the predicted IoU of given boxes at inference, differentiably w.r.t. the
box coordinates. The IoU-Net ROI heads and the standalone IoU-Net both use it.

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
from torch import nn

from d2align.config import check_choice, check_config
from d2align.modeling import (
    IOU_LOSS_TYPES,
    build_box_pooler,
    build_iou_head,
    decode_iou,
    encode_iou,
    iou_prediction_loss,
    sample_iou_training_boxes,
    select_class_iou,
)

__all__ = ["IoUBranch"]


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
        loss_type: str = "smooth_l1",
    ):
        """
        Args:
            in_features (list[str]): feature maps pooled from, finest first.
            pooler (nn.Module): `ROIPooler`-like; `PrRoIPooler` for gradients w.r.t. boxes.
            head (nn.Module): (R, C, S, S) -> (R, K) normalised IoU ((R, 1) if
                class-agnostic).
            loss_weight (float): weight of the IoU loss.
            loss_beta (float): smooth-L1 beta (IoU-Net: 1).
            num_samples (int): jittered boxes per image.
            jitter (dict): arguments of `sample_jittered_boxes`; `min_iou` (Omega_train) also
                sets the IoU normalisation.
            loss_type (str): "smooth_l1" (the paper's), "l1" or "l2" (`iou_prediction_loss`).
        """
        super().__init__()
        self.in_features = in_features
        self.pooler = pooler
        self.head = head
        self.loss_weight = loss_weight
        self.loss_beta = loss_beta
        self.loss_type = loss_type
        self.num_samples = num_samples
        self.jitter = dict(jitter)
        self.min_iou = self.jitter["min_iou"]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        c = cfg.MODEL.IOU_NET
        j = c.JITTER
        k = "MODEL.IOU_NET."
        check_config(
            c.IOU_LOSS_WEIGHT >= 0, k + "IOU_LOSS_WEIGHT", c.IOU_LOSS_WEIGHT, "must be >= 0"
        )
        check_config(c.IOU_LOSS_BETA >= 0, k + "IOU_LOSS_BETA", c.IOU_LOSS_BETA, "must be >= 0")
        check_choice(k + "IOU_LOSS_TYPE", c.IOU_LOSS_TYPE, IOU_LOSS_TYPES)
        check_config(
            c.NUM_JITTER_SAMPLES >= 1,
            k + "NUM_JITTER_SAMPLES",
            c.NUM_JITTER_SAMPLES,
            "must be >= 1",
        )
        check_config(0 < j.MIN_IOU < 1, k + "JITTER.MIN_IOU", j.MIN_IOU, "must be in (0, 1)")
        check_config(j.NUM_BINS >= 1, k + "JITTER.NUM_BINS", j.NUM_BINS, "must be >= 1")
        check_config(j.SHIFT_RANGE >= 0, k + "JITTER.SHIFT_RANGE", j.SHIFT_RANGE, "must be >= 0")
        for key in ("SCALE_RANGE", "ASPECT_RANGE"):
            value = tuple(j[key])
            ok = len(value) == 2 and 0 < value[0] <= value[1]
            check_config(ok, f"{k}JITTER.{key}", value, "must be (low, high) with 0 < low <= high")
        pooler, channels = build_box_pooler(
            input_shape,
            list(c.IN_FEATURES),
            c.POOLER_RESOLUTION,
            c.POOLER_SAMPLING_RATIO,
            c.POOLER_TYPE,
            features_key=k + "IN_FEATURES",
        )
        shape = ShapeSpec(channels=channels, height=c.POOLER_RESOLUTION, width=c.POOLER_RESOLUTION)
        return {
            "in_features": list(c.IN_FEATURES),
            "pooler": pooler,
            "head": build_iou_head(cfg, shape),
            "loss_weight": c.IOU_LOSS_WEIGHT,
            "loss_beta": c.IOU_LOSS_BETA,
            "loss_type": c.IOU_LOSS_TYPE,
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
        """The IoU loss on jittered GT boxes of every image (§3.1): `iou_prediction_loss`
        (smooth-L1 by default) of the normalised IoU predicted for each box's GT class.

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
        loss = iou_prediction_loss(
            pred, classes, iou_targets.to(pred.dtype), self.loss_type, self.loss_beta
        )
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
        return decode_iou(select_class_iou(pred, torch.cat(classes)), self.min_iou)

    def iou_fn_of_image(
        self, features: Dict[str, torch.Tensor], image_index: int
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A predictor for the boxes of one image: `fn(boxes Tensor[n, 4], classes Tensor[n])
        -> Tensor[n]` predicted IoU, differentiable w.r.t. `boxes`."""
        maps = [features[f][image_index : image_index + 1] for f in self.in_features]

        def iou_fn(boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            return self.predict(maps, [Boxes(boxes)], [classes])

        return iou_fn
