"""`D2AlignRetinaNet`: detectron2's RetinaNet with overridable assignment, losses and NMS.

The dense-detector projects (Mutual Guidance, DC Loss) change one piece of RetinaNet each: how
anchors are labelled, how the classification loss weighs them, which NMS runs at inference.
`D2AlignRetinaNet` splits detectron2's training and inference into methods so that a subclass
overrides only its piece:

    forward_training
      -> assign_anchors(anchors, gt_instances, pred_logits, pred_anchor_deltas)
             default: detectron2's `label_anchors` (IoU Matcher); regression on the foreground
      -> losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, reg_masks)
           -> classification_loss(...)   default: focal loss, summed over non-ignored anchors
                                         (`focal_loss_per_anchor` gives it per anchor, for
                                         subclasses that weight anchors)
           -> regression_loss(...)       detectron2's smooth L1 / GIoU / DIoU / CIoU, or
                                         balanced L1, summed over the regression anchors
         both divided by the moving average of the number of classification positives, as in
         detectron2, and scaled by CLS_LOSS_WEIGHT / BOX_REG_LOSS_WEIGHT
    inference_single_image
      -> per_class_nms(candidates)       "standard" | "soft_linear" | "soft_gaussian" |
                                         "cl_balanced" (`d2align.modeling.per_class_nms`)

Keys: `MODEL.D2ALIGN_RETINANET` (see `d2align.config.add_d2align_config`) beside detectron2's
`MODEL.RETINANET`. With the default keys the model is exactly detectron2's RetinaNet (same
losses, gradients and detections with the same weights).

detectron2 methods overridden (v0.6; their names and signatures are the same on detectron2
main, where `RetinaNet` also derives from `DenseDetector`): `forward_training`, `losses` (one
optional argument more, `reg_masks`), `inference_single_image`. `label_anchors`,
`forward_inference`, `_transpose_dense_predictions` and `_decode_multi_level_predictions` are
detectron2's, used as they are.

Shape legend:
    N: images; R: anchors of one image, all levels (sum of Hi * Wi * Ai); K: classes;
    M: candidates of one image before NMS; D: detections

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor

from ..config import check_choice, check_config
from .losses import balanced_l1_loss, focal_loss_on_labels
from .postprocessing import SCORE_NMS_TYPES, nms_settings_from_config, per_class_nms

__all__ = ["BBOX_REG_LOSS_TYPES", "D2AlignRetinaNet", "check_d2align_retinanet_config"]

# detectron2's dense box regression losses, and balanced L1 (Libra R-CNN) on the box deltas
BBOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou", "balanced_l1")


def check_d2align_retinanet_config(cfg) -> None:
    """Raise ValueError, naming the key, if a `MODEL.D2ALIGN_RETINANET` value (or a
    `MODEL.RETINANET` value it relies on) is out of range."""
    c, k = cfg.MODEL.D2ALIGN_RETINANET, "MODEL.D2ALIGN_RETINANET."
    if c.BBOX_REG_LOSS_TYPE:
        check_choice(k + "BBOX_REG_LOSS_TYPE", c.BBOX_REG_LOSS_TYPE, BBOX_REG_LOSS_TYPES)
    for key in ("ALPHA", "GAMMA", "BETA"):
        value = c.BALANCED_L1[key]
        check_config(value > 0, k + "BALANCED_L1." + key, value, "must be > 0")
    for key in ("CLS_LOSS_WEIGHT", "BOX_REG_LOSS_WEIGHT"):
        check_config(c[key] >= 0, k + key, c[key], "must be >= 0")
    nms_settings_from_config(c, k, SCORE_NMS_TYPES)
    r = cfg.MODEL.RETINANET
    for key in ("NMS_THRESH_TEST", "SCORE_THRESH_TEST"):
        check_config(0 <= r[key] <= 1, "MODEL.RETINANET." + key, r[key], "must be in [0, 1]")
    check_config(
        r.TOPK_CANDIDATES_TEST >= 1,
        "MODEL.RETINANET.TOPK_CANDIDATES_TEST",
        r.TOPK_CANDIDATES_TEST,
        "must be >= 1",
    )
    check_config(
        cfg.TEST.DETECTIONS_PER_IMAGE >= 1,
        "TEST.DETECTIONS_PER_IMAGE",
        cfg.TEST.DETECTIONS_PER_IMAGE,
        "must be >= 1",
    )


@META_ARCH_REGISTRY.register()
class D2AlignRetinaNet(RetinaNet):
    """detectron2's RetinaNet whose anchor assignment, losses and per-class NMS are methods a
    subclass overrides (see the module docstring). Same keys as `RetinaNet`, plus
    `MODEL.D2ALIGN_RETINANET`.
    """

    @configurable
    def __init__(
        self,
        *,
        balanced_l1_alpha: float = 0.5,
        balanced_l1_gamma: float = 1.5,
        balanced_l1_beta: float = 0.11,
        cls_loss_weight: float = 1.0,
        box_reg_loss_weight: float = 1.0,
        nms_type: str = "standard",
        soft_nms_sigma: float = 0.5,
        soft_nms_score_thresh: float = 0.001,
        cl_nms_temperature: float = 1.0,
        cl_nms_dis_scale: float = 1.0,
        cl_nms_center_weights: str = "logit",
        **kwargs,
    ):
        """
        Args:
            balanced_l1_alpha, balanced_l1_gamma, balanced_l1_beta (float): parameters of the
                balanced L1 loss, used when `box_reg_loss_type` is "balanced_l1".
            cls_loss_weight, box_reg_loss_weight (float): weights of the two losses.
            nms_type (str): one of `SCORE_NMS_TYPES` (`d2align.modeling.per_class_nms`).
            soft_nms_sigma, soft_nms_score_thresh (float): Soft-NMS parameters.
            cl_nms_temperature, cl_nms_dis_scale (float), cl_nms_center_weights (str):
                CL-balanced NMS parameters.
            kwargs: detectron2 `RetinaNet` arguments; `box_reg_loss_type` may also be
                "balanced_l1".
        """
        super().__init__(**kwargs)
        if self.box_reg_loss_type not in BBOX_REG_LOSS_TYPES:
            raise ValueError(
                f"box_reg_loss_type must be one of {BBOX_REG_LOSS_TYPES}, got "
                f"{self.box_reg_loss_type!r}"
            )
        if nms_type not in SCORE_NMS_TYPES:
            raise ValueError(f"nms_type must be one of {SCORE_NMS_TYPES}, got {nms_type!r}")
        self.balanced_l1 = dict(
            alpha=balanced_l1_alpha, gamma=balanced_l1_gamma, beta=balanced_l1_beta
        )
        self.cls_loss_weight = cls_loss_weight
        self.box_reg_loss_weight = box_reg_loss_weight
        self.nms_type = nms_type
        self.nms_kwargs = dict(
            soft_nms_sigma=soft_nms_sigma,
            soft_nms_score_thresh=soft_nms_score_thresh,
            cl_nms_temperature=cl_nms_temperature,
            cl_nms_dis_scale=cl_nms_dis_scale,
            cl_nms_center_weights=cl_nms_center_weights,
        )

    @classmethod
    def from_config(cls, cfg):
        check_d2align_retinanet_config(cfg)
        ret = super().from_config(cfg)
        c = cfg.MODEL.D2ALIGN_RETINANET
        if c.BBOX_REG_LOSS_TYPE:
            ret["box_reg_loss_type"] = c.BBOX_REG_LOSS_TYPE
        ret.update(
            balanced_l1_alpha=c.BALANCED_L1.ALPHA,
            balanced_l1_gamma=c.BALANCED_L1.GAMMA,
            balanced_l1_beta=c.BALANCED_L1.BETA,
            cls_loss_weight=c.CLS_LOSS_WEIGHT,
            box_reg_loss_weight=c.BOX_REG_LOSS_WEIGHT,
        )
        nms_type, nms_kwargs = nms_settings_from_config(
            c, "MODEL.D2ALIGN_RETINANET.", SCORE_NMS_TYPES
        )
        ret.update(nms_type=nms_type, **nms_kwargs)
        return ret

    # ---- training ------------------------------------------------------------------------

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes, reg_masks = self.assign_anchors(
            anchors, gt_instances, pred_logits, pred_anchor_deltas
        )
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, reg_masks)

    @torch.no_grad()
    def assign_anchors(
        self,
        anchors: List[Boxes],
        gt_instances: List[Instances],
        pred_logits: List[Tensor],
        pred_anchor_deltas: List[Tensor],
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Training targets of every image. The default is detectron2's `label_anchors` (the
        predictions are not used) with regression on the classification foreground; override
        to assign from the predictions (which are not detached here: detach what you use).

        Args:
            anchors (list[Boxes]): #levels Boxes, (Hi * Wi * Ai, 4) each.
            gt_instances (list[Instances]): N Instances with `gt_boxes` and `gt_classes`.
            pred_logits (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, K), class logits.
            pred_anchor_deltas (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, 4).

        Returns:
            gt_labels (list[Tensor]): N tensors (R,) int64 in {-1, 0, ..., K}: the
                classification label of each anchor (-1 ignored, K background).
            gt_boxes (list[Tensor]): N tensors (R, 4): the box each anchor regresses to
                (meaningful where the regression mask is True).
            reg_masks (list[Tensor]): N tensors (R,) bool: the anchors trained for regression.
        """
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        reg_masks = [(labels >= 0) & (labels != self.num_classes) for labels in gt_labels]
        return gt_labels, gt_boxes, reg_masks

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
        reg_masks: Optional[List[Tensor]] = None,
    ):
        """The two losses, normalised as detectron2's RetinaNet does.

        Args:
            anchors, pred_logits, pred_anchor_deltas: see `assign_anchors`.
            gt_labels, gt_boxes, reg_masks: the output of `assign_anchors`; `reg_masks` None
                means the classification foreground (detectron2's call).

        Returns:
            dict[str, Tensor]: "loss_cls" and "loss_box_reg", scalars: `classification_loss`
            and `regression_loss` times their weights, divided by the moving average (momentum
            0.9, initial 100) of the number of classification-positive anchors in the batch.
            Logs `num_pos_anchors` and `num_reg_anchors` per image.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        reg_mask = pos_mask if reg_masks is None else torch.stack(reg_masks)  # (N, R)
        num_pos_anchors = pos_mask.sum().item()
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        storage.put_scalar("num_reg_anchors", reg_mask.sum().item() / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)

        loss_cls = self.classification_loss(
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )
        loss_box_reg = self.regression_loss(anchors, pred_anchor_deltas, gt_boxes, reg_mask)
        return {
            "loss_cls": self.cls_loss_weight * loss_cls / normalizer,
            "loss_box_reg": self.box_reg_loss_weight * loss_box_reg / normalizer,
        }

    def classification_loss(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: Tensor,
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Tensor:
        """Sigmoid focal loss (MODEL.RETINANET.FOCAL_LOSS_ALPHA / GAMMA), summed over the
        non-ignored anchors and the classes, not normalised. A subclass that weights anchors
        (e.g. by their localization error, from the decoded `pred_anchor_deltas` and
        `gt_boxes`) overrides this with `focal_loss_per_anchor`.

        Args:
            anchors (list[Boxes]): #levels Boxes, (Hi * Wi * Ai, 4) each.
            pred_logits (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, K).
            gt_labels (Tensor[N, R]): int64 labels in {-1, 0, ..., K}.
            pred_anchor_deltas (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, 4).
            gt_boxes (list[Tensor]): N tensors (R, 4), the matched ground-truth boxes.

        Returns:
            Tensor[]: the summed loss.
        """
        return focal_loss_on_labels(
            cat(pred_logits, dim=1),
            gt_labels,
            self.num_classes,
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )

    def focal_loss_per_anchor(self, pred_logits: List[Tensor], gt_labels: Tensor) -> Tensor:
        """The focal loss of each anchor, summed over its K classes; 0 for ignored anchors.
        Its sum is `classification_loss` (up to the order of the floating-point sum).

        Args:
            pred_logits (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, K).
            gt_labels (Tensor[N, R]): int64 labels in {-1, 0, ..., K}.

        Returns:
            Tensor[N, R]: the per-anchor loss, differentiable w.r.t. the logits.
        """
        logits = cat(pred_logits, dim=1)
        per_class = focal_loss_on_labels(
            logits,
            gt_labels,
            self.num_classes,
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="none",
        )  # (number of non-ignored anchors, K), in the order of gt_labels >= 0
        per_anchor = per_class.sum(dim=1)  # float32 under autocast, whatever the logits' dtype
        loss = per_anchor.new_zeros(gt_labels.shape)
        return loss.masked_scatter(gt_labels >= 0, per_anchor)

    def regression_loss(
        self,
        anchors: List[Boxes],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
        reg_mask: Tensor,
    ) -> Tensor:
        """Box regression loss of the anchors in `reg_mask`, summed, not normalised.

        "smooth_l1" (on the deltas, beta MODEL.RETINANET.SMOOTH_L1_LOSS_BETA), "giou", "diou",
        "ciou" (on the decoded boxes) are detectron2's `_dense_box_regression_loss`;
        "balanced_l1" is `d2align.modeling.losses.balanced_l1_loss` on the deltas
        (MODEL.D2ALIGN_RETINANET.BALANCED_L1).

        Args:
            anchors (list[Boxes]): #levels Boxes, (Hi * Wi * Ai, 4) each.
            pred_anchor_deltas (list[Tensor]): #levels tensors (N, Hi * Wi * Ai, 4).
            gt_boxes (list[Tensor]): N tensors (R, 4), the box each anchor regresses to.
            reg_mask (Tensor[N, R]): bool, the anchors trained for regression.

        Returns:
            Tensor[]: the summed loss.
        """
        if self.box_reg_loss_type != "balanced_l1":
            return _dense_box_regression_loss(
                anchors,
                self.box2box_transform,
                pred_anchor_deltas,
                gt_boxes,
                reg_mask,
                box_reg_loss_type=self.box_reg_loss_type,
                smooth_l1_beta=self.smooth_l1_beta,
            )
        anchors = type(anchors[0]).cat(anchors).tensor  # (R, 4)
        target_deltas = self.box2box_transform.get_deltas(
            anchors.expand(reg_mask.shape[0], -1, -1)[reg_mask], torch.stack(gt_boxes)[reg_mask]
        )
        return balanced_l1_loss(
            cat(pred_anchor_deltas, dim=1)[reg_mask],
            target_deltas,
            reduction="sum",
            **self.balanced_l1,
        )

    # ---- inference -----------------------------------------------------------------------

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_delta: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """detectron2's single-image inference with the NMS step as `per_class_nms`.

        Args:
            anchors (list[Boxes]): #levels Boxes, (Hi * Wi * Ai, 4) each.
            box_cls (list[Tensor]): #levels tensors (Hi * Wi * Ai, K), class probabilities.
            box_delta (list[Tensor]): #levels tensors (Hi * Wi * Ai, 4).
            image_size (tuple[int, int]): (height, width) of the image.

        Returns:
            Instances: the detections, as `per_class_nms` returns them.
        """
        candidates = self._decode_multi_level_predictions(
            anchors,
            box_cls,
            box_delta,
            self.test_score_thresh,
            self.test_topk_candidates,
            image_size,
        )
        return self.per_class_nms(candidates)

    def per_class_nms(self, candidates: Instances) -> Instances:
        """Per-class NMS of MODEL.D2ALIGN_RETINANET.NMS_TYPE (threshold
        MODEL.RETINANET.NMS_THRESH_TEST), then the TEST.DETECTIONS_PER_IMAGE best.

        Args:
            candidates (Instances): M candidates with `pred_boxes` (Boxes[M]), `scores`
                (Tensor[M]) and `pred_classes` (Tensor[M], int64).

        Returns:
            Instances: D <= TEST.DETECTIONS_PER_IMAGE of them, best first, with `scores` the
            detection scores of `per_class_nms` (decayed, for Soft-NMS).
        """
        keep, scores = per_class_nms(
            candidates.pred_boxes.tensor,
            candidates.scores,
            candidates.pred_classes,
            self.nms_type,
            self.test_nms_thresh,
            **self.nms_kwargs,
        )
        detections = candidates[keep[: self.max_detections_per_image]]
        detections.scores = scores[: self.max_detections_per_image]
        return detections
