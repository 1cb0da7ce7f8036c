"""The standalone IoU-Net (§4.1-4.2): backbone + IoU predictor, no RPN and no R-CNN branch,
trained on its own and applied as a post-processor to the detections of any other detector.

`StandaloneIoUNet` trains on jittered GT boxes exactly as the IoU branch of the joint model.
At inference it takes, with each image, the raw (pre-NMS) detections of another detector and
returns them after the configured NMS (IoU-guided by default) and optimization-based
refinement. `DetectorWithIoUNet` chains a detector and a standalone IoU-Net into one model
that detectron2's evaluation runs like any other.

Shape legend:
    N: images; D: detections of one image

Boxes are XYXY in absolute pixels: the detector's output is in original-image pixels; the IoU
predictor works at the resolution of the image it is given (the network input).
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from .iou_branch import IoUBranch
from .postprocess import IoUNetPostProcessor

__all__ = ["StandaloneIoUNet", "DetectorWithIoUNet"]


@META_ARCH_REGISTRY.register()
class StandaloneIoUNet(nn.Module):
    """Backbone + IoU branch (the dashed box of Fig. 5) as a detectron2 meta-architecture.

    Training inputs: detectron2's dataset dicts with "instances" (GT). Inference inputs: the
    same dicts plus "detections", an `Instances` of the other detector in original-image
    pixels with `pred_boxes`, `scores`, `pred_classes`.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        iou_branch: IoUBranch,
        postprocessor: IoUNetPostProcessor,
        pixel_mean: List[float],
        pixel_std: List[float],
    ):
        """
        Args:
            backbone (nn.Module): a detectron2 backbone (FPN).
            iou_branch (IoUBranch): pooler + IoU head.
            postprocessor (IoUNetPostProcessor): NMS and refinement of given detections.
            pixel_mean, pixel_std (list[float]): input normalisation, per channel.
        """
        super().__init__()
        self.backbone = backbone
        self.iou_branch = iou_branch
        self.postprocessor = postprocessor
        # buffers follow the module to its device (`.to(cfg.MODEL.DEVICE)`)
        mean = torch.tensor(pixel_mean).view(-1, 1, 1)  # cpu: a buffer, moved with the module
        std = torch.tensor(pixel_std).view(-1, 1, 1)  # cpu: a buffer, moved with the module
        self.register_buffer("pixel_mean", mean, False)
        self.register_buffer("pixel_std", std, False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "iou_branch": IoUBranch(cfg, backbone.output_shape()),
            "postprocessor": IoUNetPostProcessor(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _features(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        return self.backbone(images.tensor)

    def forward(self, batched_inputs: List[Dict]):
        """Training: {"loss_iou"}. Inference: [{"instances"}] in original-image pixels."""
        if self.training:
            targets = [x["instances"].to(self.device) for x in batched_inputs]
            return self.iou_branch.losses(self._features(batched_inputs), targets)
        if not all("detections" in x for x in batched_inputs):
            raise ValueError(
                "StandaloneIoUNet post-processes another detector's output: each input needs "
                "'detections' (Instances with pred_boxes, scores, pred_classes); use "
                "DetectorWithIoUNet or projects/IoUNet/evaluate_standalone.py"
            )
        return self.postprocess(batched_inputs, [x["detections"] for x in batched_inputs])

    def postprocess(self, batched_inputs: List[Dict], detections: List[Instances]) -> List[Dict]:
        """NMS + refinement of given detections.

        Args:
            batched_inputs (list[dict]): N dataset dicts with "image" (C, H, W) and the
                original "height", "width".
            detections (list[Instances]): N sets of detections in original-image pixels.

        Returns:
            list[dict]: N {"instances": Instances} in original-image pixels, with
            `pred_boxes`, `scores`, `pred_classes`, `pred_ious`.
        """
        features = self._features(batched_inputs)
        outputs = []
        for i, (inputs, dets) in enumerate(zip(batched_inputs, detections)):
            in_h, in_w = inputs["image"].shape[-2:]
            height, width = inputs.get("height", in_h), inputs.get("width", in_w)
            boxes = dets.pred_boxes.tensor.to(self.device).clone()
            boxes[:, 0::2] *= in_w / width
            boxes[:, 1::2] *= in_h / height
            clipped = Boxes(boxes)
            clipped.clip((in_h, in_w))
            result = self.postprocessor(
                clipped.tensor,
                dets.scores.to(self.device),
                dets.pred_classes.to(self.device),
                (in_h, in_w),
                self.iou_branch.iou_fn_of_image(features, i),
            )
            outputs.append({"instances": detector_postprocess(result, height, width)})
        return outputs


class DetectorWithIoUNet(nn.Module):
    """Any detectron2 detector followed by a standalone IoU-Net: "detector X + IoU-Net".

    The detector should return its raw detections (its NMS disabled, see
    `evaluate_standalone.py`), which the IoU-Net then suppresses and refines.
    """

    def __init__(self, detector: nn.Module, iou_net: StandaloneIoUNet):
        super().__init__()
        self.detector = detector
        self.iou_net = iou_net

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        """[{"instances"}] per image, in original-image pixels (inference only)."""
        detections = [r["instances"] for r in self.detector(batched_inputs)]
        return self.iou_net.postprocess(batched_inputs, detections)
