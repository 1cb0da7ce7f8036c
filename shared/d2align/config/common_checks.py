"""`check_common_config`: refuse out-of-range values of the keys every d2align run reads.

detectron2 accepts, without a word, values that silently change what a run means: a negative
score threshold keeps every box, an NMS threshold above 1 suppresses nothing, a negative
learning rate climbs the loss, a fraction above 1 samples more positives than exist. The
projects check their own keys (`check_<project>_config`); this checks detectron2's keys of the
detectors they build on (RPN, ROI heads, Cascade, RetinaNet's training keys, solver, test,
data loader) and d2align's own `D2ALIGN.*` keys, each with `check_config`, so the error is
`ValueError("<KEY> = <value>: <requirement>")`. `d2align.engine.load_config` calls it.
"""

from detectron2.config import CfgNode

from .checks import check_config

__all__ = ["check_common_config"]

# (key, low, high): the value must lie in [low, high] (None: unbounded on that side).
_IN_RANGE = (
    ("MODEL.RPN.NMS_THRESH", 0.0, 1.0),
    ("MODEL.RPN.POSITIVE_FRACTION", 0.0, 1.0),
    ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", 1, None),
    ("MODEL.RPN.PRE_NMS_TOPK_TRAIN", 1, None),
    ("MODEL.RPN.PRE_NMS_TOPK_TEST", 1, None),
    ("MODEL.RPN.POST_NMS_TOPK_TRAIN", 1, None),
    ("MODEL.RPN.POST_NMS_TOPK_TEST", 1, None),
    ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, 1.0),
    ("MODEL.ROI_HEADS.NMS_THRESH_TEST", 0.0, 1.0),
    ("MODEL.ROI_HEADS.POSITIVE_FRACTION", 0.0, 1.0),
    ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 1, None),
    ("MODEL.ROI_HEADS.NUM_CLASSES", 1, None),
    ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 1, None),
    ("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 0, None),
    ("MODEL.RETINANET.NUM_CLASSES", 1, None),
    ("MODEL.RETINANET.FOCAL_LOSS_ALPHA", 0.0, 1.0),
    ("MODEL.RETINANET.FOCAL_LOSS_GAMMA", 0.0, None),
    ("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", 0.0, None),
    ("SOLVER.MAX_ITER", 1, None),
    ("SOLVER.IMS_PER_BATCH", 1, None),
    ("SOLVER.MOMENTUM", 0.0, 1.0),
    ("SOLVER.WEIGHT_DECAY", 0.0, None),
    ("SOLVER.GAMMA", 0.0, 1.0),
    ("SOLVER.WARMUP_FACTOR", 0.0, 1.0),
    ("SOLVER.WARMUP_ITERS", 0, None),
    ("SOLVER.CHECKPOINT_PERIOD", 1, None),
    ("TEST.EVAL_PERIOD", 0, None),
    ("TEST.DETECTIONS_PER_IMAGE", 1, None),
    ("DATALOADER.NUM_WORKERS", 0, None),
    ("D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_TRAIN", 0.0, 1.0),
    ("D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_EVAL", 0.0, 1.0),
)

# detectron2's ROI heads, which run detectron2's NMS whatever MODEL.D2ALIGN_ROI_HEADS says
_DETECTRON2_ROI_HEADS = ("StandardROIHeads", "CascadeROIHeads", "Res5ROIHeads")

# Keys holding a list of IoU thresholds, each in [0, 1]; (key, whether it must increase: the
# thresholds of detectron2's Matcher do, a cascade's stage IoUs need not).
_IOU_LISTS = (
    ("MODEL.RPN.IOU_THRESHOLDS", True),
    ("MODEL.ROI_HEADS.IOU_THRESHOLDS", True),
    ("MODEL.RETINANET.IOU_THRESHOLDS", True),
    ("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", False),
)


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return None
        node = node[part]
    return node


def _requirement(low, high) -> str:
    if high is None:
        return f"must be >= {low}"
    return f"must be in [{low}, {high}]"


def check_common_config(cfg: CfgNode) -> None:
    """Raise a ValueError naming the first key of `cfg` whose value is out of its range.

    Checks the ranges of `_IN_RANGE` (thresholds and fractions in [0, 1], counts >= 1, ...),
    the IoU threshold lists of `_IOU_LISTS` (each in [0, 1], increasing), SOLVER.BASE_LR > 0,
    SOLVER.STEPS positive and increasing. Keys a config does not have are
    skipped (e.g. a node added by a project that is not loaded).
    """
    for key, low, high in _IN_RANGE:
        value = _get(cfg, key)
        if value is None:
            continue
        ok = value >= low and (high is None or value <= high)
        check_config(ok, key, value, _requirement(low, high))
    for key, increasing in _IOU_LISTS:
        values = _get(cfg, key)
        if values is None:
            continue
        values = list(values)
        ok = all(0.0 <= v <= 1.0 for v in values) and (not increasing or values == sorted(values))
        order = " and increasing" if increasing else ""
        check_config(ok, key, values, f"IoU thresholds must be in [0, 1]{order}")
    base_lr = cfg.SOLVER.BASE_LR
    check_config(base_lr > 0, "SOLVER.BASE_LR", base_lr, "must be > 0")
    steps = list(cfg.SOLVER.STEPS)  # steps beyond MAX_ITER are ignored (detectron2 warns)
    ok = steps == sorted(steps) and all(s > 0 for s in steps)
    check_config(ok, "SOLVER.STEPS", steps, "iterations must be > 0 and increasing")
    # MODEL.D2ALIGN_ROI_HEADS is read by d2align's ROI heads only, not by detectron2's own
    nms_type = _get(cfg, "MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE")
    heads = cfg.MODEL.ROI_HEADS.NAME
    check_config(
        nms_type in (None, "standard")
        or cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN"
        or heads not in _DETECTRON2_ROI_HEADS,
        "MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE",
        nms_type,
        f"detectron2's {heads} does not read it: set MODEL.ROI_HEADS.NAME to "
        "D2AlignStandardROIHeads or D2AlignCascadeROIHeads",
    )
    # nor MODEL.ROI_BOX_HEAD.PREDICTOR: detectron2's heads would silently train its default
    predictor = _get(cfg, "MODEL.ROI_BOX_HEAD.PREDICTOR")
    check_config(
        predictor in (None, "FastRCNNOutputLayers")
        or cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN"
        or heads not in _DETECTRON2_ROI_HEADS,
        "MODEL.ROI_BOX_HEAD.PREDICTOR",
        predictor,
        f"MODEL.ROI_HEADS.NAME = {heads!r} (detectron2's) ignores it and would train "
        "FastRCNNOutputLayers instead: set MODEL.ROI_HEADS.NAME to D2AlignStandardROIHeads or "
        "D2AlignCascadeROIHeads (or the project's heads)",
    )
    # per-stage predictors: only d2align's cascade heads (and their subclasses) read them
    stage_predictors = list(_get(cfg, "MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS") or [])
    check_config(
        not stage_predictors
        or cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN"
        or _is_d2align_cascade(heads),
        "MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS",
        stage_predictors,
        f"MODEL.ROI_HEADS.NAME = {heads!r} ignores it: only D2AlignCascadeROIHeads (and the "
        "heads built on it) read one predictor per stage",
    )


def _is_d2align_cascade(heads: str) -> bool:
    """Whether the registered ROI heads `heads` are D2AlignCascadeROIHeads or built on it."""
    from detectron2.modeling import ROI_HEADS_REGISTRY

    from ..modeling.cascade_rcnn import D2AlignCascadeROIHeads

    cls = ROI_HEADS_REGISTRY.get(heads) if heads in ROI_HEADS_REGISTRY else None
    return cls is not None and issubclass(cls, D2AlignCascadeROIHeads)
