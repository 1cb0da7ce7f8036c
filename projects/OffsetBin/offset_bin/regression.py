"""`L2RegressionOutputLayers`: detectron2's `FastRCNNOutputLayers` with the squared-error (L2)
box regression loss of R-CNN (eq. 2), the "L2 Loss" row of the paper's Table 2.

detectron2's box predictor offers smooth-L1 (any beta, `MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA`)
and the IoU losses, not L2; everything but `box_reg_loss` is detectron2's.
"""

from detectron2.layers import nonzero_tuple
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from d2align.modeling import BOX_PREDICTOR_REGISTRY

__all__ = ["L2RegressionOutputLayers"]


@BOX_PREDICTOR_REGISTRY.register()
class L2RegressionOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN output layers trained with sum_i (t_i - t_i*)^2 on the foreground
    proposals' weighted deltas (mmdetection's MSELoss, as the paper's baseline), normalised
    by the number of proposals like detectron2's box loss."""

    def box_reg_loss(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """
        Args:
            proposal_boxes (Tensor[R, 4]): XYXY.
            gt_boxes (Tensor[R, 4]): matched ground truth, XYXY (any box for background).
            pred_deltas (Tensor[R, K * 4] or Tensor[R, 4]): predicted deltas.
            gt_classes (Tensor[R], int64): in [0, K]; K = background.

        Returns:
            Tensor[]: the summed squared error / max(R, 1).
        """
        fg = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == 4:
            fg_deltas = pred_deltas[fg]
        else:
            fg_deltas = pred_deltas.view(-1, self.num_classes, 4)[fg, gt_classes[fg]]
        targets = self.box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
        return (fg_deltas - targets).square().sum() / max(gt_classes.numel(), 1.0)
