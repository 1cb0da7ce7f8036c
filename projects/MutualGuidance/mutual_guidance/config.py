"""Config keys of Mutual Guidance, under `MODEL.MUTUAL_GUIDANCE`."""
from detectron2.config import CfgNode as CN

from d2align.config import add_d2align_config

# Label assignment rules (values of MODEL.MUTUAL_GUIDANCE.ASSIGNMENT): which task's anchors are
# chosen dynamically. "static": IoU_anchor for both tasks; "localize_to_classify" (Sec. 3.1):
# classification labels from IoU_regressed; "classify_to_localize" (Sec. 3.2): regression
# anchors from IoU_amplified; "mutual_guidance": both.
ASSIGNMENTS = ("static", "localize_to_classify", "classify_to_localize", "mutual_guidance")


def add_mutual_guidance_config(cfg: CN) -> None:
    """Add the Mutual Guidance keys (and d2align's shared keys) to `cfg` in place.

    The static rule's thresholds are detectron2's MODEL.RETINANET.IOU_THRESHOLDS ([0.4, 0.5]:
    negative < 0.4 <= ignored < 0.5 <= positive) and the focal loss parameters are
    MODEL.RETINANET.FOCAL_LOSS_ALPHA / GAMMA; MODEL.RETINANET.SMOOTH_L1_LOSS_BETA and
    BBOX_REG_LOSS_TYPE are not used (the regression loss is balanced L1).
    """
    add_d2align_config(cfg)
    if "MUTUAL_GUIDANCE" in cfg.MODEL:
        return
    cfg.MODEL.MUTUAL_GUIDANCE = CN()
    _C = cfg.MODEL.MUTUAL_GUIDANCE
    # One of ASSIGNMENTS (Table 1's four rows).
    _C.ASSIGNMENT = "mutual_guidance"
    # sigma of Eq. (1): IoU_amplified = IoU_anchor ** ((sigma - p) / sigma); must be > 1.
    _C.SIGMA = 2.0
    # Balanced L1 loss (Libra R-CNN) on the box deltas: alpha, gamma, beta. beta = 0.11 suits
    # RetinaNet's unnormalised deltas (MODEL.RETINANET.BBOX_REG_WEIGHTS = (1, 1, 1, 1)).
    _C.BALANCED_L1 = CN()
    _C.BALANCED_L1.ALPHA = 0.5
    _C.BALANCED_L1.GAMMA = 1.5
    _C.BALANCED_L1.BETA = 0.11
    # Weights of the classification (focal) and box regression (balanced L1) losses.
    _C.CLS_LOSS_WEIGHT = 1.0
    _C.BOX_REG_LOSS_WEIGHT = 1.0


def check_mutual_guidance_config(cfg: CN) -> None:
    """Raise ValueError, naming the key, if a Mutual Guidance setting is invalid."""
    mg = cfg.MODEL.MUTUAL_GUIDANCE
    if mg.ASSIGNMENT not in ASSIGNMENTS:
        raise ValueError(
            f"MODEL.MUTUAL_GUIDANCE.ASSIGNMENT = {mg.ASSIGNMENT!r}; expected one of {ASSIGNMENTS}"
        )
    if not mg.SIGMA > 1.0:
        raise ValueError(f"MODEL.MUTUAL_GUIDANCE.SIGMA = {mg.SIGMA}; it must be > 1 (Eq. 1)")
    for key in ("ALPHA", "GAMMA", "BETA"):
        if not mg.BALANCED_L1[key] > 0:
            raise ValueError(
                f"MODEL.MUTUAL_GUIDANCE.BALANCED_L1.{key} = {mg.BALANCED_L1[key]}; must be > 0"
            )
    for key in ("CLS_LOSS_WEIGHT", "BOX_REG_LOSS_WEIGHT"):
        if not mg[key] >= 0:
            raise ValueError(f"MODEL.MUTUAL_GUIDANCE.{key} = {mg[key]}; must be >= 0")
    thresholds, labels = cfg.MODEL.RETINANET.IOU_THRESHOLDS, cfg.MODEL.RETINANET.IOU_LABELS
    if len(thresholds) != 2 or not 0 < thresholds[0] <= thresholds[1] <= 1:
        raise ValueError(
            f"MODEL.RETINANET.IOU_THRESHOLDS = {thresholds}; Mutual Guidance needs "
            "[negative, positive] with 0 < negative <= positive <= 1"
        )
    if list(labels) != [0, -1, 1]:
        raise ValueError(
            f"MODEL.RETINANET.IOU_LABELS = {labels}; Mutual Guidance's static rule is "
            "[0, -1, 1] (negative, ignored, positive)"
        )
