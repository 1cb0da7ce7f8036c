"""The cascade grid branch of CPM R-CNN (§3.1-3.2, the Cascade Mapping Module), as a mixin of
`CPMROIHeads`: pooling of the grid features, one stage's refinement, the stages' training
losses (eq. 1-2) and the stages applied one after the other at inference.

Training: stage j trains on the boxes whose IoU with a GT reaches its threshold (stage 1: the
sampled proposals; stage j > 1: the detached boxes decoded by stage j - 1, plus the image's
ground-truth boxes with `add_gt_to_stages`, as the official code adds them to every stage),
with the heatmap targets of its mapping ratio and the loss beta_j omega L_BCE (eq. 2). The
number of RoIs of each stage is logged as "stage{j}/grid/num_rois".

Shape legend:
    R: boxes over the batch; D_i: boxes of image i; G: grid points; S: heatmap side

Boxes are XYXY in absolute pixels of the network input.
"""

from typing import Dict, List, Tuple

import torch
from detectron2.layers import cat
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from .cascade import select_stage_boxes
from .grid_coder import decode_grid_heatmaps, grid_heatmap_loss, grid_heatmap_targets

__all__ = ["GridCascadeMixin"]


def _clip(boxes: torch.Tensor, image_size) -> torch.Tensor:
    clipped = Boxes(boxes.clone())
    clipped.clip(image_size)
    return clipped.tensor


class GridCascadeMixin:
    """Methods of the cascade grid branch. The class using it holds `grid_in_features`,
    `grid_pooler`, `grid_heads` (nn.ModuleList, g_j), `mapping_ratios`, `iou_thresholds`,
    `stage_weights` (beta_j), `grid_loss_weight` (omega), `target_radius`,
    `add_gt_to_stages` and `test_stage`."""

    @property
    def num_stages(self) -> int:
        return len(self.grid_heads)

    def pool_grid(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor]):
        """Tensor[R, C, S/2, S/2] grid-branch RoI features of `boxes` (list[Tensor[D_i, 4]])."""
        return self.grid_pooler(
            [features[f] for f in self.grid_in_features], [Boxes(b) for b in boxes]
        )

    def refine(
        self, stage: int, features, rois: List[torch.Tensor], image_sizes
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stage `stage` (0-based) on `rois`.

        Returns:
            logits (Tensor[R, G, S, S]): its heatmap logits; boxes (list[Tensor[D_i, 4]]): the
            boxes decoded from them (detached, clipped to the images), per image.
        """
        logits = self.grid_heads[stage](self.pool_grid(features, rois))
        decoded = decode_grid_heatmaps(logits.detach(), cat(rois), self.mapping_ratios[stage])
        boxes = [
            _clip(b, size) for b, size in zip(decoded.split([len(r) for r in rois]), image_sizes)
        ]
        return logits, boxes

    def grid_losses(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: List[Instances],
    ) -> Tuple[Dict[str, torch.Tensor], List[Instances]]:
        """Losses of the grid stages (eq. 2) and the last stage's output.

        Args:
            features (dict[str, Tensor]): backbone outputs, (N, C, H_l, W_l) each.
            proposals (list[Instances]): the sampled proposals (`proposal_boxes`).
            targets (list[Instances]): `gt_boxes`, `gt_classes` per image.

        Returns:
            losses: {"loss_grid_stage{j}": beta_j omega L_BCE}.
            final (list[Instances]): per image, the last stage's RoIs (`proposal_boxes`), the
                GT each was matched to (`gt_boxes`, `gt_classes`) and the boxes the stage
                decoded from them (`pred_boxes`, Boxes).
        """
        storage = get_event_storage()
        image_sizes = [p.image_size for p in proposals]
        boxes = [p.proposal_boxes.tensor.detach() for p in proposals]
        losses = {}
        for j in range(self.num_stages):
            if j > 0 and self.add_gt_to_stages:
                boxes = [torch.cat([b, t.gt_boxes.tensor]) for b, t in zip(boxes, targets)]
            rois, matched_gt, matched_cls = [], [], []
            for boxes_i, target in zip(boxes, targets):
                kept, matched, _ = select_stage_boxes(
                    boxes_i, target.gt_boxes.tensor, self.iou_thresholds[j]
                )
                rois.append(boxes_i[kept])
                matched_gt.append(target.gt_boxes.tensor[matched])
                matched_cls.append(target.gt_classes[matched])
            storage.put_scalar(f"stage{j + 1}/grid/num_rois", sum(len(r) for r in rois))
            logits, boxes = self.refine(j, features, rois, image_sizes)
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
        final = []
        for rois_i, boxes_i, gt_i, cls_i, size in zip(
            rois, boxes, matched_gt, matched_cls, image_sizes
        ):
            inst = Instances(size, proposal_boxes=Boxes(rois_i), gt_boxes=Boxes(gt_i))
            inst.gt_classes = cls_i
            inst.pred_boxes = Boxes(boxes_i)
            final.append(inst)
        return losses, final

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
            logits, boxes = self.refine(j, features, boxes, image_sizes)
            after_each.append(boxes)
            if return_peaks:
                peaks.append(logits.flatten(2).max(dim=2).values.sigmoid())
        return (after_each, peaks) if return_peaks else after_each
