"""Config keys of Mutual Guidance, under `MODEL.MUTUAL_GUIDANCE`."""

from detectron2.config import CfgNode as CN

from d2align.config import add_d2align_config, check_choice, check_config

# Label assignment rules (values of MODEL.MUTUAL_GUIDANCE.ASSIGNMENT): which task's anchors are
# chosen dynamically. "static": IoU_anchor for both tasks; "localize_to_classify" (Sec. 3.1):
# classification labels from IoU_regressed; "classify_to_localize" (Sec. 3.2): regression
# anchors from IoU_amplified; "mutual_guidance": both.
ASSIGNMENTS = ("static", "localize_to_classify", "classify_to_localize", "mutual_guidance")


def add_mutual_guidance_config(cfg: CN) -> None:
    """Add the Mutual Guidance keys (and d2align's shared keys) to `cfg` in place.

    The static rule's thresholds are detectron2's MODEL.RETINANET.IOU_THRESHOLDS ([0.4, 0.5]:
    negative < 0.4 <= ignored < 0.5 <= positive). The losses are those of the shared RetinaNet
    base, `MODEL.D2ALIGN_RETINANET` (the configs set BBOX_REG_LOSS_TYPE "balanced_l1", with its
    BALANCED_L1 parameters and the loss weights there) and MODEL.RETINANET.FOCAL_LOSS_ALPHA /
    GAMMA.
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


def check_mutual_guidance_config(cfg: CN) -> None:
    """Raise ValueError, naming the key, if a Mutual Guidance setting is invalid."""
    mg, k = cfg.MODEL.MUTUAL_GUIDANCE, "MODEL.MUTUAL_GUIDANCE."
    check_choice(k + "ASSIGNMENT", mg.ASSIGNMENT, ASSIGNMENTS)
    check_config(mg.SIGMA > 1.0, k + "SIGMA", mg.SIGMA, "must be > 1 (Eq. 1)")
    thresholds, labels = cfg.MODEL.RETINANET.IOU_THRESHOLDS, cfg.MODEL.RETINANET.IOU_LABELS
    check_config(
        len(thresholds) == 2 and 0 < thresholds[0] <= thresholds[1] <= 1,
        "MODEL.RETINANET.IOU_THRESHOLDS",
        thresholds,
        "Mutual Guidance needs [negative, positive] with 0 < negative <= positive <= 1",
    )
    check_config(
        list(labels) == [0, -1, 1],
        "MODEL.RETINANET.IOU_LABELS",
        labels,
        "Mutual Guidance's static rule is [0, -1, 1] (negative, ignored, positive)",
    )
