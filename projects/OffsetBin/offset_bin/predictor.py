"""`OffsetBinOutputLayers`: detectron2's `FastRCNNOutputLayers` whose box regression is
replaced by offset bin classification (Qiu et al., CVPR 2020, §3.2, Fig. 2).

The classification branch (`cls_score`, its loss and probabilities) is detectron2's. The
regression layer `bbox_pred` outputs, per box and per regressed class (one when
class-agnostic), 4 x N bin logits: for each offset (tx, ty, tw, th of eq. 1, detectron2's
weighted deltas) the n_k logits of each of the K stages of hierarchical focusing, N = sum n_k.
The loss is the cross entropy of eq. 7 on the foreground proposals, summed over the offsets
and the stages and normalised as detectron2's box loss (by the number of sampled proposals),
weighted by lambda_bin; it is reported as "loss_box_reg". Boxes decode by argmax or softmax
expectation (eq. 10) per stage, summed over the stages (eq. 11), then applied to the proposal
by the `Box2BoxTransform` (each Cascade stage passes its own).

Shape legend:
    R: proposals over the batch; C: regressed classes (K foreground classes, or 1)
    N: bins of all stages per offset

Boxes are XYXY in absolute pixels of the network input.
"""

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, nonzero_tuple
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from torch import Tensor, nn

from d2align.modeling import BOX_PREDICTOR_REGISTRY
from d2align.modeling.bin_coder import OffsetBinCoder

from .config import check_offset_bin_config

__all__ = ["OffsetBinOutputLayers", "offset_bin_coder_from_config"]


def offset_bin_coder_from_config(cfg) -> OffsetBinCoder:
    """The K-stage coder of `MODEL.OFFSET_BIN` (checked first, errors naming the key)."""
    check_offset_bin_config(cfg)
    ob = cfg.MODEL.OFFSET_BIN
    return OffsetBinCoder(
        num_bins=[ob.NUM_BINS] * ob.NUM_STAGES,
        offset_ranges=[ob.OFFSET_RANGE] + list(ob.FOCUS_RANGES),
        expectation=ob.DECODE == "expectation",
    )


@BOX_PREDICTOR_REGISTRY.register()
class OffsetBinOutputLayers(FastRCNNOutputLayers):
    """Class scores as `FastRCNNOutputLayers`; box offsets classified into bins.

    `forward` returns (scores (R, K + 1), bin logits (R, C * 4 * N)); `losses`,
    `inference`, `predict_boxes`, `predict_probs` and `predict_boxes_for_gt_classes` take
    them as detectron2's take (scores, deltas).
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, bin_coder: OffsetBinCoder, **kwargs):
        """
        Args:
            input_shape (ShapeSpec): shape of the box head's output.
            bin_coder (OffsetBinCoder): the bins of each stage and the decoding.
            kwargs: the arguments of `FastRCNNOutputLayers` (`box2box_transform`,
                `num_classes`, `cls_agnostic_bbox_reg`, test thresholds, `loss_weight`
                with lambda_bin as its "loss_box_reg"); the regression loss type and
                smooth-L1 beta are not used.
        """
        super().__init__(input_shape, **kwargs)
        box_dim = len(self.box2box_transform.weights)
        if box_dim != 4:
            raise ValueError(f"offset bins code axis-aligned boxes (4 offsets), not {box_dim}")
        self.bin_coder = bin_coder
        # the regression layer becomes a classifier over each offset's bins
        num_reg_classes = self.bbox_pred.out_features // box_dim
        self.bbox_pred = nn.Linear(
            self.bbox_pred.in_features, num_reg_classes * 4 * bin_coder.total_bins
        )
        nn.init.normal_(self.bbox_pred.weight, std=0.01)
        nn.init.constant_(self.bbox_pred.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["bin_coder"] = offset_bin_coder_from_config(cfg)
        ret["loss_weight"] = {"loss_box_reg": cfg.MODEL.OFFSET_BIN.LOSS_WEIGHT}
        return ret

    def _bin_logits(self, bin_logits: Tensor) -> Tensor:
        """(R, C * 4 * N) -> (R, C, 4, N)."""
        bins = self.bin_coder.total_bins
        return bin_logits.view(bin_logits.shape[0], bin_logits.shape[1] // (4 * bins), 4, bins)

    def decode_deltas(self, bin_logits: Tensor) -> Tensor:
        """Box deltas of the bin logits (eq. 10 / 11).

        Args:
            bin_logits (Tensor[R, C * 4 * N]): the second output of `forward`.

        Returns:
            Tensor[R, C * 4]: deltas for `Box2BoxTransform.apply_deltas`.
        """
        return self.bin_coder.decode(self._bin_logits(bin_logits)).flatten(1)

    def box_reg_loss(self, proposal_boxes, gt_boxes, pred_deltas, gt_classes):
        """L_bin (eq. 7) of the foreground proposals, / the number of proposals.

        Args:
            proposal_boxes (Tensor[R, 4]): XYXY.
            gt_boxes (Tensor[R, 4]): the matched ground truth, XYXY (any box for background).
            pred_deltas (Tensor[R, C * 4 * N]): bin logits (`forward`'s second output).
            gt_classes (Tensor[R], int64): in [0, K]; K = background.

        Returns:
            Tensor[]: sum over foreground proposals, offsets and stages of the cross entropy,
            divided by max(R, 1) (detectron2's normalisation of the box loss).
        """
        fg = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        logits = self._bin_logits(pred_deltas)
        logits = logits[fg, 0] if logits.shape[1] == 1 else logits[fg, gt_classes[fg]]
        targets = self.box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
        return self.bin_coder.loss(logits, targets) / max(gt_classes.numel(), 1.0)

    def _as_deltas(self, predictions):
        scores, bin_logits = predictions
        return scores, self.decode_deltas(bin_logits)

    def predict_boxes(self, predictions, proposals):
        """Boxes of the decoded bins, per image: list of Tensor[R_i, C * 4], XYXY."""
        return super().predict_boxes(self._as_deltas(predictions), proposals)

    def predict_boxes_for_gt_classes(self, predictions, proposals):
        """Boxes of the decoded bins for each proposal's GT class: list of Tensor[R_i, 4]."""
        return super().predict_boxes_for_gt_classes(self._as_deltas(predictions), proposals)

    def extra_repr(self) -> str:
        return repr(self.bin_coder)
