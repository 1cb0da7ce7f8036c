"""CPM R-CNN ROI heads (Fig. 2): a classification branch, the cascade grid branch (Cascade
Mapping Module) and the fused scoring network (IoU / Resampling Scoring Modules).

Training (§3.2-3.4): the classification branch is Faster R-CNN's on the sampled proposals.
Stage j of the grid branch trains on the boxes whose IoU with a GT reaches its threshold (stage
1: the sampled proposals; stage j > 1: the detached boxes decoded by stage j - 1, plus the
ground-truth boxes as the official code adds them to every stage, `MODEL.CPM_RCNN.
ADD_GT_TO_STAGES`), with the heatmap targets of its mapping ratio and the loss beta_j omega
L_BCE (eq. 2). The ISM regresses the IoU of the last stage's boxes with their GT (eq. 7); the
RSM classifies the last stage's boxes against the negative proposals, each box re-matched to
the ground truth with the classification branch's foreground threshold (a decoded box below it
is background, as in the official code), the union subsampled like the proposals
(`MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE`, `POSITIVE_FRACTION`).

Inference (§3.4): the classification branch scores the proposals; per class NMS
(`MODEL.ROI_HEADS.NMS_THRESH_TEST`, 0.3) keeps at most `TEST.DETECTIONS_PER_IMAGE` (96); the
stages refine the kept boxes one after the other; the fused score (eq. 4) of the returned boxes
ranks them.

Shape legend:
    N: images; R: boxes over the batch; R_i: of image i
    K: foreground classes; G: grid points; S: heatmap side

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, build_box_head
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import nn

from d2align.config import check_choice, check_config
from d2align.modeling import (
    D2AlignStandardROIHeads,
    build_box_pooler,
    build_iou_head,
    iou_prediction_loss,
    per_class_candidates,
    proposal_iou_training_boxes,
    select_class_iou,
)

from .cascade import fused_score, select_stage_boxes, stage_loss_weights
from .classifier import ClassificationOutputLayers
from .config import TEST_SCORES, check_cpm_rcnn_config
from .grid_coder import decode_grid_heatmaps, grid_heatmap_loss, grid_heatmap_targets
from .grid_head import GridHead

__all__ = ["CPMROIHeads"]


def _clip(boxes: torch.Tensor, image_size) -> torch.Tensor:
    clipped = Boxes(boxes.clone())
    clipped.clip(image_size)
    return clipped.tensor


@ROI_HEADS_REGISTRY.register()
class CPMROIHeads(D2AlignStandardROIHeads):
    """Classification branch + cascade grid branch + ISM + RSM, fused score at inference.

    Detections carry `pred_boxes` (the returned stage's boxes), `scores` (the fused score),
    `pred_classes`, `cls_scores` (classification confidence), and `pred_ious` (ISM) /
    `rsm_scores` (RSM) when those modules are enabled.
    """

    @configurable
    def __init__(
        self,
        *,
        grid_in_features: List[str],
        grid_pooler: nn.Module,
        grid_heads: List[GridHead],
        mapping_ratios: List[float],
        iou_thresholds: List[float],
        grid_loss_weight: float,
        target_radius: float,
        test_stage: int,
        gamma: float,
        test_score: str = "fused",
        add_gt_to_stages: bool = True,
        ism_head: Optional[nn.Module] = None,
        ism_loss_type: str = "l2",
        ism_loss_weight: float = 1.0,
        rsm_head: Optional[nn.Module] = None,
        rsm_predictor: Optional[ClassificationOutputLayers] = None,
        rsm_loss_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            grid_in_features (list[str]): feature maps the grid branch pools from.
            grid_pooler (nn.Module): pooler of the grid branch (S x S, S = 14).
            grid_heads (list[GridHead]): g_j, one per stage.
            mapping_ratios (list[float]): M_j, one per stage.
            iou_thresholds (list[float]): S_j's IoU thresholds, one per stage.
            grid_loss_weight (float): omega of eq. 2.
            target_radius (float): radius of the heatmap targets' discs, in cells.
            test_stage (int): stage (1-based) whose boxes inference returns.
            gamma (float): of the fused score (eq. 4).
            test_score (str): what ranks the detections: "fused" (eq. 4) or "cls" (the
                classification confidence alone).
            add_gt_to_stages (bool): in training, append each image's ground-truth boxes to
                the candidates of every stage j > 1 (stage 1's proposals hold them already).
            ism_head (nn.Module or None): IoU Scoring Module on the last stage's 7x7 grid
                features (None: no ISM).
            ism_loss_type (str): "l2", "l1" or "smooth_l1" (eq. 7).
            ism_loss_weight (float): alpha_2.
            rsm_head, rsm_predictor (nn.Module or None): box head and classifier of the
                Resampling Scoring Module (None: no RSM).
            rsm_loss_weight (float): alpha_1.
            kwargs: arguments of `StandardROIHeads`.
        """
        super().__init__(**kwargs)
        if not (len(grid_heads) == len(mapping_ratios) == len(iou_thresholds) >= 1):
            raise ValueError(
                f"{len(grid_heads)} grid heads, {len(mapping_ratios)} mapping ratios and "
                f"{len(iou_thresholds)} IoU thresholds: one of each per stage"
            )
        if not 1 <= test_stage <= len(grid_heads):
            raise ValueError(f"test_stage {test_stage} not in [1, {len(grid_heads)}]")
        check_choice("test_score", test_score, TEST_SCORES)
        self.grid_in_features = grid_in_features
        self.grid_pooler = grid_pooler
        self.grid_heads = nn.ModuleList(grid_heads)
        self.mapping_ratios = list(mapping_ratios)
        self.iou_thresholds = list(iou_thresholds)
        self.stage_weights = stage_loss_weights(len(grid_heads))
        self.grid_loss_weight = grid_loss_weight
        self.target_radius = target_radius
        self.test_stage = test_stage
        self.gamma = gamma
        self.test_score = test_score
        self.add_gt_to_stages = add_gt_to_stages
        self.ism_head = ism_head
        self.ism_loss_type = ism_loss_type
        self.ism_loss_weight = ism_loss_weight
        self.rsm_head = rsm_head
        self.rsm_predictor = rsm_predictor
        self.rsm_loss_weight = rsm_loss_weight

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        check_cpm_rcnn_config(cfg)
        predictor = cfg.MODEL.ROI_BOX_HEAD.PREDICTOR
        check_config(
            predictor == "ClassificationOutputLayers",
            "MODEL.ROI_BOX_HEAD.PREDICTOR",
            predictor,
            "CPMROIHeads localizes with the grid branch: the classification branch must be "
            "'ClassificationOutputLayers'",
        )
        for key in ("MASK_ON", "KEYPOINT_ON"):
            check_config(not cfg.MODEL[key], "MODEL." + key, True, "CPMROIHeads detects boxes")
        ret = super().from_config(cfg, input_shape)
        c, g = cfg.MODEL.CPM_RCNN, cfg.MODEL.CPM_RCNN.GRID_HEAD
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        grid_pooler, channels = build_box_pooler(
            input_shape,
            in_features,
            g.POOLER_RESOLUTION,
            g.POOLER_SAMPLING_RATIO,
            g.POOLER_TYPE,
            features_key="MODEL.ROI_HEADS.IN_FEATURES",
        )
        pooled = ShapeSpec(channels=channels, height=g.POOLER_RESOLUTION, width=g.POOLER_RESOLUTION)
        grid_heads = [GridHead(cfg, pooled) for _ in range(c.NUM_STAGES)]
        ret.update(
            grid_in_features=in_features,
            grid_pooler=grid_pooler,
            grid_heads=grid_heads,
            mapping_ratios=list(c.MAPPING_RATIOS),
            iou_thresholds=list(c.IOU_THRESHOLDS),
            grid_loss_weight=c.GRID_LOSS_WEIGHT,
            target_radius=g.TARGET_RADIUS,
            test_stage=c.TEST_STAGE or c.NUM_STAGES,
            gamma=c.FUSED_SCORE_GAMMA,
            test_score=c.TEST_SCORE,
            add_gt_to_stages=c.ADD_GT_TO_STAGES,
            ism_loss_type=c.ISM.LOSS_TYPE,
            ism_loss_weight=c.ISM.LOSS_WEIGHT,
            rsm_loss_weight=c.RSM.LOSS_WEIGHT,
        )
        if c.ISM.ENABLED:
            ret["ism_head"] = build_iou_head(cfg, grid_heads[-1].feature_shape)
        if c.RSM.ENABLED:
            box_side = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
            rsm_head = build_box_head(
                cfg, ShapeSpec(channels=channels, height=box_side, width=box_side)
            )
            ret["rsm_head"] = rsm_head
            ret["rsm_predictor"] = ClassificationOutputLayers(cfg, rsm_head.output_shape)
        return ret

    @property
    def num_stages(self) -> int:
        return len(self.grid_heads)

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """See `StandardROIHeads.forward`. Training losses: "loss_cls" (classification
        branch), "loss_grid_stage{j}" (beta_j omega L_BCE), "loss_ism", "loss_rsm"."""
        del images
        if not self.training:
            return self._forward_box(features, proposals), {}
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses = self._forward_box(features, proposals)
        losses.update(self.cascade_losses(features, proposals, targets))
        return proposals, losses

    def _pool_grid(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]):
        return self.grid_pooler(
            [features[f] for f in self.grid_in_features], [Boxes(b) for b in boxes]
        )

    def _pool_box(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]):
        return self.box_pooler(
            [features[f] for f in self.box_in_features], [Boxes(b) for b in boxes]
        )

    def _refine(self, stage: int, features, rois: List[torch.Tensor], image_sizes):
        """Heatmap logits of stage `stage` (0-based) for `rois`, and the boxes decoded from
        them (detached, clipped to the images), per image."""
        logits = self.grid_heads[stage](self._pool_grid(features, rois))
        decoded = decode_grid_heatmaps(logits.detach(), cat(rois), self.mapping_ratios[stage])
        boxes = [
            _clip(b, size) for b, size in zip(decoded.split([len(r) for r in rois]), image_sizes)
        ]
        return logits, boxes

    def cascade_losses(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """Losses of the grid stages (eq. 2), the ISM (eq. 7) and the RSM.

        Args:
            features (dict[str, Tensor]): backbone outputs, (N, C, H_l, W_l) each.
            proposals (list[Instances]): the sampled proposals (`proposal_boxes`,
                `gt_classes`).
            targets (list[Instances]): `gt_boxes`, `gt_classes` per image.
        """
        storage = get_event_storage()
        image_sizes = [p.image_size for p in proposals]
        boxes = [p.proposal_boxes.tensor.detach() for p in proposals]
        losses = {}
        for j in range(self.num_stages):
            rois, matched_gt, matched_cls = [], [], []
            if j > 0 and self.add_gt_to_stages:
                boxes = [torch.cat([b, t.gt_boxes.tensor]) for b, t in zip(boxes, targets)]
            for boxes_i, target in zip(boxes, targets):
                kept, matched, _ = select_stage_boxes(
                    boxes_i, target.gt_boxes.tensor, self.iou_thresholds[j]
                )
                rois.append(boxes_i[kept])
                matched_gt.append(target.gt_boxes.tensor[matched])
                matched_cls.append(target.gt_classes[matched])
            storage.put_scalar(f"stage{j + 1}/grid/num_rois", sum(len(r) for r in rois))
            logits, boxes = self._refine(j, features, rois, image_sizes)
            heatmap_targets = grid_heatmap_targets(
                cat(matched_gt),
                cat(rois),
                self.mapping_ratios[j],
                logits.shape[1],
                logits.shape[-1],
                self.target_radius,
            )
            weight = self.stage_weights[j] * self.grid_loss_weight
            losses[f"loss_grid_stage{j + 1}"] = weight * grid_heatmap_loss(logits, heatmap_targets)
        # `boxes` are now the last stage's boxes B_f of its RoIs `rois`
        final = []
        for rois_i, boxes_i, gt_i, cls_i, size in zip(
            rois, boxes, matched_gt, matched_cls, image_sizes
        ):
            inst = Instances(size, proposal_boxes=Boxes(rois_i), gt_boxes=Boxes(gt_i))
            inst.gt_classes = cls_i
            final.append(inst)
        final = proposal_iou_training_boxes(final, self.num_classes, boxes)
        if self.ism_head is not None:
            losses["loss_ism"] = self.ism_loss_weight * self._ism_loss(features, final)
        if self.rsm_head is not None:
            losses["loss_rsm"] = self.rsm_loss_weight * self._rsm_loss(
                features, proposals, final, targets
            )
        return losses

    def _ism_scores(self, features, boxes: List[torch.Tensor]) -> torch.Tensor:
        """ISM output Tensor[R, K] (or [R, 1]) for the boxes of every image (eq. 3)."""
        grid_features = self.grid_heads[-1].features(self._pool_grid(features, boxes))
        return self.ism_head(grid_features)

    def _ism_loss(self, features, final: List[Instances]) -> torch.Tensor:
        pred = self._ism_scores(features, [f.proposal_boxes.tensor for f in final])
        return iou_prediction_loss(
            pred,
            cat([f.gt_classes for f in final]),
            cat([f.gt_ious for f in final]).to(pred.dtype),
            loss_type=self.ism_loss_type,
        )

    def _rsm_logits(self, features, boxes: List[torch.Tensor]) -> torch.Tensor:
        """RSM class logits Tensor[R, K + 1] for the boxes of every image."""
        scores, _ = self.rsm_predictor(self.rsm_head(self._pool_box(features, boxes)))
        return scores

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
            final (list[Instances]): `proposal_boxes`, the last stage's boxes.
            targets (list[Instances]): `gt_boxes`, `gt_classes`.

        Returns:
            list[Instances]: `proposal_boxes` and `gt_classes` (background = K) per image.
        """
        samples = []
        for props, fin, target in zip(proposals, final, targets):
            negative = props[props.gt_classes == self.num_classes]
            boxes = fin.proposal_boxes.tensor
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

    def _rsm_loss(
        self,
        features,
        proposals: List[Instances],
        final: List[Instances],
        targets: List[Instances],
    ):
        """Cross-entropy of the RSM on each image's `rsm_samples`."""
        samples = self.rsm_samples(proposals, final, targets)
        num_fg = sum(int((s.gt_classes < self.num_classes).sum()) for s in samples)
        num_all = sum(len(s) for s in samples)
        storage = get_event_storage()
        storage.put_scalar("rsm/num_fg_samples", num_fg / len(samples))
        storage.put_scalar("rsm/num_bg_samples", (num_all - num_fg) / len(samples))
        logits = self._rsm_logits(features, [s.proposal_boxes.tensor for s in samples])
        return self.rsm_predictor.losses((logits, None), samples)["loss_cls"]

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Training: {"loss_cls"} of the classification branch. Inference: the detections
        of every image (see the module docstring)."""
        box_features = self.box_head(
            self._pool_box(features, [p.proposal_boxes.tensor for p in proposals])
        )
        predictions = self.box_predictor(box_features)
        del box_features
        if self.training:
            return self.box_predictor.losses(predictions, proposals)
        probs = self.box_predictor.predict_probs(predictions, proposals)
        return self.inference(features, proposals, probs)

    @torch.no_grad()
    def select_detections(self, proposals: List[Instances], probs: List[torch.Tensor]):
        """§3.4's first step: per class, the proposals above the score threshold go through
        NMS (`MODEL.ROI_HEADS.NMS_THRESH_TEST`) and the best `TEST.DETECTIONS_PER_IMAGE` stay.

        Args:
            proposals (list[Instances]): `proposal_boxes` per image (R_i).
            probs (list[Tensor[R_i, K + 1]]): class probabilities, background last.

        Returns:
            boxes (list[Tensor[D_i, 4]]), cls_scores (list[Tensor[D_i]]), classes
            (list[Tensor[D_i]] int64): per image, the kept proposals (the cascade's input).
        """
        boxes, cls_scores, classes = [], [], []
        for props, probs_i in zip(proposals, probs):
            cand_boxes, cand_scores, cand_classes, _ = per_class_candidates(
                props.proposal_boxes.tensor,
                probs_i,
                props.image_size,
                self.box_predictor.test_score_thresh,
            )
            keep = batched_nms(
                cand_boxes, cand_scores, cand_classes, self.box_predictor.test_nms_thresh
            )[: self.box_predictor.test_topk_per_image]
            boxes.append(cand_boxes[keep])
            cls_scores.append(cand_scores[keep])
            classes.append(cand_classes[keep])
        return boxes, cls_scores, classes

    @torch.no_grad()
    def cascade_boxes(
        self,
        features: Dict[str, torch.Tensor],
        boxes: List[torch.Tensor],
        image_sizes,
        return_peaks: bool = False,
    ):
        """The grid stages 1 .. `test_stage` applied one after the other to `boxes`.

        Args:
            features (dict[str, Tensor]): backbone outputs, (N, C, H_l, W_l) each.
            boxes (list[Tensor[D_i, 4]]): the boxes entering stage 1, per image.
            image_sizes (list[tuple[int, int]]): (h, w) per image, to clip the boxes.
            return_peaks (bool): also return each stage's heatmap peaks.

        Returns:
            list[list[Tensor[D_i, 4]]]: the boxes after each stage (test_stage entries), per
            image; with `return_peaks`, also list[Tensor[D, G]]: per stage, the highest
            probability of each heatmap (all images' boxes concatenated).
        """
        after_each, peaks = [], []
        for j in range(self.test_stage):
            logits, boxes = self._refine(j, features, boxes, image_sizes)
            after_each.append(boxes)
            if return_peaks:
                peaks.append(logits.flatten(2).max(dim=2).values.sigmoid())
        return (after_each, peaks) if return_peaks else after_each

    @torch.no_grad()
    def inference(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        probs: List[torch.Tensor],
    ) -> List[Instances]:
        """§3.4: NMS on the classified proposals, the cascade, the fused score.

        Args:
            features (dict[str, Tensor]): backbone outputs, (N, C, H_l, W_l) each.
            proposals (list[Instances]): `proposal_boxes` per image (R_i).
            probs (list[Tensor[R_i, K + 1]]): class probabilities, background last.

        Returns:
            list[Instances]: per image, the detections sorted by their fused score (by
                `cls_scores` with `test_score` "cls").
        """
        image_sizes = [p.image_size for p in proposals]
        boxes, cls_scores, classes = self.select_detections(proposals, probs)
        boxes = self.cascade_boxes(features, boxes, image_sizes)[-1]
        all_classes = cat(classes)
        ism = rsm = None
        if self.ism_head is not None:
            ism = select_class_iou(self._ism_scores(features, boxes), all_classes)
        if self.rsm_head is not None:
            rsm_probs = self._rsm_logits(features, boxes).softmax(dim=1)
            rsm = rsm_probs.gather(1, all_classes[:, None]).squeeze(1)
        cls_scores = cat(cls_scores)
        if self.test_score == "cls":
            score = cls_scores
        else:
            score = fused_score(cls_scores, ism, rsm, self.gamma)
        results, start = [], 0
        for boxes_i, size in zip(boxes, image_sizes):
            rows = slice(start, start + len(boxes_i))
            start += len(boxes_i)
            order = score[rows].argsort(descending=True)
            result = Instances(size)
            result.pred_boxes = Boxes(boxes_i[order])
            result.scores = score[rows][order]
            result.pred_classes = all_classes[rows][order]
            result.cls_scores = cls_scores[rows][order]
            if ism is not None:
                result.pred_ious = ism[rows][order]
            if rsm is not None:
                result.rsm_scores = rsm[rows][order]
            results.append(result)
        return results
