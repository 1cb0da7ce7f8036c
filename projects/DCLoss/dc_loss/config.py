"""Config keys of DC Loss, under `MODEL.DC_LOSS`."""

from detectron2.config import CfgNode as CN

from d2align.config import add_d2align_config, check_config

from .assignment import PROMOTE_CHOICES


def add_dc_loss_config(cfg: CN) -> None:
    """Add the DC Loss keys (and d2align's shared keys) to `cfg` in place.

    The IoU thresholds of eq. 5 are detectron2's MODEL.RETINANET.IOU_THRESHOLDS
    [bg_threshold, fg_threshold] ([0.4, 0.5]). CL-balanced NMS (eq. 6-7) is the shared RetinaNet
    base's `MODEL.D2ALIGN_RETINANET.NMS_TYPE "cl_balanced"` (with CL_NMS_TEMPERATURE and
    CL_NMS_DIS_SCALE there).
    """
    add_d2align_config(cfg)
    if "DC_LOSS" in cfg.MODEL:
        return
    cfg.MODEL.DC_LOSS = CN()
    # IoU-classification-aware anchor assignment (IAC, eq. 4-5)
    cfg.MODEL.DC_LOSS.IAC = CN()
    _I = cfg.MODEL.DC_LOSS.IAC
    # False: detectron2's IoU assignment (Table 2's baseline row)
    _I.ENABLED = True
    # alpha of eq. 4: s = alpha * p_hat + (1 - alpha) * area(intersection) / area(smaller box);
    # in [0, 1]. 0: geometry only; 1: the predicted score only (on anchors overlapping the GT).
    _I.ALPHA = 0.5
    # score_threshold of eq. 5: an anchor with s >= this is positive; in (0, 1].
    _I.SCORE_THRESH = 0.6
    # which anchors the score clause may make positive (eq. 5 does not say which case wins):
    # "ignored": those the IoU rule leaves ignored (bg <= IoU < fg); "any": negatives too.
    _I.PROMOTE = "ignored"
    # Dynamic Coefficient loss (eq. 1-3) on the positives' classification loss
    cfg.MODEL.DC_LOSS.DC = CN()
    _D = cfg.MODEL.DC_LOSS.DC
    _D.ENABLED = True
    # epsilon of eq. 1 (the denominator is >= 0.5 already; epsilon only bounds lambda by
    # 1 / (0.5 + epsilon)); >= 0.
    _D.EPS = 1e-6


def check_dc_loss_config(cfg: CN) -> None:
    """Raise ValueError, naming the key, if a DC Loss setting is invalid."""
    iac, k = cfg.MODEL.DC_LOSS.IAC, "MODEL.DC_LOSS."
    check_config(0.0 <= iac.ALPHA <= 1.0, k + "IAC.ALPHA", iac.ALPHA, "must be in [0, 1] (eq. 4)")
    check_config(
        0.0 < iac.SCORE_THRESH <= 1.0,
        k + "IAC.SCORE_THRESH",
        iac.SCORE_THRESH,
        "must be in (0, 1] (eq. 5); set IAC.ENABLED False to turn the rule off",
    )
    check_config(
        iac.PROMOTE in PROMOTE_CHOICES,
        k + "IAC.PROMOTE",
        iac.PROMOTE,
        f"must be one of {PROMOTE_CHOICES}",
    )
    eps = cfg.MODEL.DC_LOSS.DC.EPS
    check_config(eps >= 0.0, k + "DC.EPS", eps, "must be >= 0 (eq. 1)")
    thresholds, labels = cfg.MODEL.RETINANET.IOU_THRESHOLDS, cfg.MODEL.RETINANET.IOU_LABELS
    check_config(
        len(thresholds) == 2 and 0 < thresholds[0] <= thresholds[1] <= 1,
        "MODEL.RETINANET.IOU_THRESHOLDS",
        thresholds,
        "DC Loss needs [bg_threshold, fg_threshold] with 0 < bg <= fg <= 1 (eq. 5)",
    )
    check_config(
        list(labels) == [0, -1, 1],
        "MODEL.RETINANET.IOU_LABELS",
        labels,
        "eq. 5 labels [0, -1, 1] (negative, ignored, positive)",
    )
