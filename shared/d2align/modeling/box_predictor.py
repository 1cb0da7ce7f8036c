"""A registry of box predictors, the last layers of the R-CNN box branch, chosen by config.

detectron2's ROI heads hard-wire `FastRCNNOutputLayers` as the box predictor. The d2align ROI
heads (`D2AlignStandardROIHeads`, `D2AlignCascadeROIHeads` and their subclasses) build theirs
with :func:`build_box_predictor`, which looks up `MODEL.ROI_BOX_HEAD.PREDICTOR` in
:data:`BOX_PREDICTOR_REGISTRY`; the default, "FastRCNNOutputLayers", is detectron2's own class,
so the default model is exactly detectron2's.

The interface a registered predictor offers (that of `FastRCNNOutputLayers`, which the ROI
heads and detectron2's inference call) is:

* ``__init__(cfg, input_shape, **kwargs)`` through ``@configurable``: `input_shape` is the box
  head's output shape; the cascade heads pass ``box2box_transform=Box2BoxTransform(weights)``
  with each stage's `MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS`, so a predictor used there
  accepts that argument;
* ``forward(x)``: box-head features (R, D) over the batch -> `predictions`, any object the
  methods below understand (`FastRCNNOutputLayers`: class logits (R, K + 1) and deltas
  (R, K * 4) or (R, 4));
* ``losses(predictions, proposals) -> dict[str, Tensor]``: `proposals` (list[Instances]) carry
  `proposal_boxes`, `gt_boxes`, `gt_classes` (K = background);
* ``inference(predictions, proposals) -> (list[Instances], list[Tensor])``: detections and
  the kept proposal indices per image, as `fast_rcnn_inference`;
* ``predict_boxes(predictions, proposals) -> list[Tensor[R_i, K * 4 or 4]]``: XYXY boxes,
  absolute pixels, per image (the cascade's next proposals come from these);
* ``predict_probs(predictions, proposals) -> list[Tensor[R_i, K + 1]]``: class probabilities,
  background last (the cascade averages them over the stages);
* ``predict_boxes_for_gt_classes(predictions, proposals) -> list[Tensor[R_i, 4]]``: the box of
  each proposal's GT class (`MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES`);
* attributes ``test_score_thresh``, ``test_nms_thresh``, ``test_topk_per_image`` (read by the
  cascade's inference and by the projects' post-processing).

A predictor that classifies discretized offsets (Offset Bin: 4 x n bin logits per box) keeps
this interface and decodes its bins in `predict_boxes`; one with its own localization branch
(CPM R-CNN's grid branch) does the same with its own `predictions`.
"""

from typing import Optional

from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.utils.registry import Registry
from torch import nn

from ..config import check_config

__all__ = ["BOX_PREDICTOR_REGISTRY", "build_box_predictor"]

BOX_PREDICTOR_REGISTRY = Registry("BOX_PREDICTOR")
BOX_PREDICTOR_REGISTRY.__doc__ = """Box predictors of the R-CNN box branch, chosen by
`MODEL.ROI_BOX_HEAD.PREDICTOR`: called as `obj(cfg, input_shape, **kwargs)` with the box head's
output shape, offering the interface of `FastRCNNOutputLayers` (see
`d2align.modeling.box_predictor`)."""
BOX_PREDICTOR_REGISTRY.register(FastRCNNOutputLayers)


def build_box_predictor(
    cfg, input_shape: ShapeSpec, name: Optional[str] = None, key: str = "", **kwargs
) -> nn.Module:
    """The box predictor named by `MODEL.ROI_BOX_HEAD.PREDICTOR` (or `name`).

    Args:
        cfg (CfgNode): the model's config.
        input_shape (ShapeSpec): output shape of the box head (channels D, or D x H x W).
        name (str): a registered predictor instead of `MODEL.ROI_BOX_HEAD.PREDICTOR` (a
            cascade stage's, `MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS`), with `key`, the config
            key it comes from, for the error message.
        kwargs: arguments overriding those the predictor's `from_config` reads from `cfg`
            (e.g. `box2box_transform` for a cascade stage).

    Raises:
        ValueError: the name is not registered (the message names the key and the choices).
    """
    if name is None:
        name = cfg.MODEL.ROI_BOX_HEAD.get("PREDICTOR")  # None: a config without d2align's keys
        key = "MODEL.ROI_BOX_HEAD.PREDICTOR"
    names = sorted(n for n, _ in BOX_PREDICTOR_REGISTRY)
    check_config(
        name in BOX_PREDICTOR_REGISTRY,
        key,
        name,
        f"must name a box predictor registered in BOX_PREDICTOR_REGISTRY, one of {names} "
        "(the key is added by d2align.config.add_d2align_config)",
    )
    return BOX_PREDICTOR_REGISTRY.get(name)(cfg, input_shape, **kwargs)
