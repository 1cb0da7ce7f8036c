"""The scoring network of CPM R-CNN (§3.3): the IoU Scoring Module (ISM, eq. 3 and 7) and the
Resampling Scoring Module (RSM), as a mixin of `CPMROIHeads`.

Training: the ISM regresses the IoU of the last grid stage's boxes with their GT (eq. 7); the
RSM classifies the last stage's boxes against the negative proposals, each box re-matched to
the ground truth with the classification branch's matcher (a decoded box below the foreground
threshold is background, as in the official code), the union subsampled like the proposals
(`MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE`, `POSITIVE_FRACTION`). Inference: each module scores
the returned boxes for their class.

Shape legend:
    R: boxes over the batch; D_i: boxes of image i; K: foreground classes

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from d2align.modeling import iou_prediction_loss, proposal_iou_training_boxes, select_class_iou

__all__ = ["ScoringModulesMixin"]


class ScoringModulesMixin:
    """Methods of the ISM and the RSM. The class using it is a detectron2 ROI heads class
    (`box_pooler`, `box_in_features`, `proposal_matcher`, `num_classes`,
    `batch_size_per_image`, `positive_fraction`) and holds `ism_head` (or None),
    `ism_loss_type`, `ism_loss_weight`, `rsm_head` and `rsm_predictor` (or None),
    `rsm_loss_weight`, and the grid branch's `grid_heads` and `pool_grid` (the ISM reads the
    last stage's tower)."""

    def pool_box(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]):
        """Tensor[R, C, 7, 7] box-branch RoI features of `boxes` (list[Tensor[D_i, 4]]), as
        the classification branch and the RSM pool them."""
        return self.box_pooler(
            [features[f] for f in self.box_in_features], [Boxes(b) for b in boxes]
        )

    def ism_scores(self, features, boxes: List[torch.Tensor]) -> torch.Tensor:
        """ISM output Tensor[R, K] (or [R, 1]) for the boxes of every image (eq. 3)."""
        grid_features = self.grid_heads[-1].features(self.pool_grid(features, boxes))
        return self.ism_head(grid_features)

    def rsm_logits(self, features, boxes: List[torch.Tensor]) -> torch.Tensor:
        """RSM class logits Tensor[R, K + 1] for the boxes of every image."""
        scores, _ = self.rsm_predictor(self.rsm_head(self.pool_box(features, boxes)))
        return scores

    def scoring_losses(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        final: List[Instances],
        targets: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """{"loss_ism": alpha_2 L_ISM, "loss_rsm": alpha_1 L_RSM} (eq. 6), for the enabled
        modules.

        Args:
            features (dict[str, Tensor]): backbone outputs.
            proposals (list[Instances]): the sampled proposals (`gt_classes`).
            final (list[Instances]): the grid branch's last stage (`GridCascadeMixin.
                grid_losses`): `proposal_boxes`, `gt_boxes`, `gt_classes`, `pred_boxes`.
            targets (list[Instances]): `gt_boxes`, `gt_classes`.
        """
        losses = {}
        if self.ism_head is not None:
            decoded = [f.pred_boxes.tensor for f in final]
            samples = proposal_iou_training_boxes(final, self.num_classes, decoded)
            losses["loss_ism"] = self.ism_loss_weight * self.ism_loss(features, samples)
        if self.rsm_head is not None:
            samples = self.rsm_samples(proposals, final, targets)
            losses["loss_rsm"] = self.rsm_loss_weight * self.rsm_loss(features, samples)
        return losses

    def ism_loss(self, features, samples: List[Instances]) -> torch.Tensor:
        """L of eq. 7 on `samples` (`proposal_boxes`, `gt_classes`, `gt_ious` per image)."""
        pred = self.ism_scores(features, [s.proposal_boxes.tensor for s in samples])
        return iou_prediction_loss(
            pred,
            cat([s.gt_classes for s in samples]),
            cat([s.gt_ious for s in samples]).to(pred.dtype),
            loss_type=self.ism_loss_type,
        )

    def rsm_samples(
        self, proposals: List[Instances], final: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """The RSM's training samples of each image: its negative proposals and the last
        stage's boxes, the latter re-matched to the image's ground truth with the classification
        branch's matcher (`MODEL.ROI_HEADS.IOU_THRESHOLDS`: a decoded box whose best IoU is
        below the foreground threshold is background, whatever RoI it came from), the union
        subsampled to `batch_size_per_image` with at most `positive_fraction` foreground.

        Args:
            proposals (list[Instances]): the sampled proposals (`proposal_boxes`,
                `gt_classes`; background = K).
            final (list[Instances]): `pred_boxes`, the last stage's boxes.
            targets (list[Instances]): `gt_boxes`, `gt_classes`.

        Returns:
            list[Instances]: `proposal_boxes` and `gt_classes` (background = K) per image.
        """
        samples = []
        for props, fin, target in zip(proposals, final, targets):
            negative = props[props.gt_classes == self.num_classes]
            boxes = fin.pred_boxes.tensor
            if len(target) > 0 and len(boxes) > 0:
                quality = pairwise_iou(target.gt_boxes, Boxes(boxes))  # (G_t, P)
                matched, match_labels = self.proposal_matcher(quality)
                labels = target.gt_classes[matched].clone()
                labels[match_labels == 0] = self.num_classes
                labels[match_labels == -1] = -1
            else:
                labels = torch.full_like(boxes[:, 0], self.num_classes, dtype=torch.int64)
            all_boxes = torch.cat([negative.proposal_boxes.tensor, boxes])
            all_labels = torch.cat([negative.gt_classes, labels])
            pos, neg = subsample_labels(
                all_labels, self.batch_size_per_image, self.positive_fraction, self.num_classes
            )
            chosen = torch.cat([pos, neg])
            sample = Instances(props.image_size)
            sample.proposal_boxes = Boxes(all_boxes[chosen])
            sample.gt_classes = all_labels[chosen]
            samples.append(sample)
        return samples

    def rsm_loss(self, features, samples: List[Instances]) -> torch.Tensor:
        """Cross-entropy of the RSM on `samples` (`rsm_samples`); logs the mean numbers of
        foreground and background samples per image ("rsm/num_fg_samples", "..._bg_...")."""
        num_fg = sum(int((s.gt_classes < self.num_classes).sum()) for s in samples)
        num_all = sum(len(s) for s in samples)
        storage = get_event_storage()
        storage.put_scalar("rsm/num_fg_samples", num_fg / len(samples))
        storage.put_scalar("rsm/num_bg_samples", (num_all - num_fg) / len(samples))
        logits = self.rsm_logits(features, [s.proposal_boxes.tensor for s in samples])
        return self.rsm_predictor.losses((logits, None), samples)["loss_cls"]

    @torch.no_grad()
    def module_scores(
        self, features, boxes: List[torch.Tensor], classes: torch.Tensor
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """At inference, each enabled module's score of each box for its class.

        Args:
            boxes (list[Tensor[D_i, 4]]): per image. classes (Tensor[D], int64): all images'.

        Returns:
            ism (Tensor[D] or None): predicted IoU; rsm (Tensor[D] or None): RSM probability.
        """
        ism = rsm = None
        if self.ism_head is not None:
            ism = select_class_iou(self.ism_scores(features, boxes), classes)
        if self.rsm_head is not None:
            rsm_probs = self.rsm_logits(features, boxes).softmax(dim=1)
            rsm = rsm_probs.gather(1, classes[:, None]).squeeze(1)
        return ism, rsm
