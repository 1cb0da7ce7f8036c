"""Config keys of CPM R-CNN (Zhu et al.), under `MODEL.CPM_RCNN`.

Paper symbols in the comments; the defaults are the paper's full method (§3.4: N = 3 stages with
mapping ratios (2, 1.5, 1.25) and IoU thresholds (0.5, 0.6, 0.7), ISM with the l2 loss, RSM,
gamma = 0.8). The ROI heads are selected by `MODEL.ROI_HEADS.NAME: "CPMROIHeads"`; the
classification branch is detectron2's box head with `MODEL.ROI_BOX_HEAD.PREDICTOR:
"ClassificationOutputLayers"` (no box regression: the grid branch localizes). The IoU Scoring
Module's FC layers are the shared IoU head's keys (`MODEL.ROI_IOU_HEAD`); the RSM classifier
has the structure of the box head (`MODEL.ROI_BOX_HEAD.NUM_FC`, `FC_DIM`, ...). Inference's
"NMS 0.3, at most 96 per image" are `MODEL.ROI_HEADS.NMS_THRESH_TEST` and
`TEST.DETECTIONS_PER_IMAGE` (set by the Base configs).
"""

import math

from detectron2.config import CfgNode as CN

from d2align.config import add_d2align_config, check_choice, check_config
from d2align.modeling import IOU_LOSS_TYPES

__all__ = ["TEST_SCORES", "add_cpm_rcnn_config", "check_cpm_rcnn_config"]

TEST_SCORES = ("fused", "cls")  # values of MODEL.CPM_RCNN.TEST_SCORE


def add_cpm_rcnn_config(cfg: CN) -> None:
    """Add the CPM R-CNN keys (and d2align's shared keys) to `cfg` in place (idempotent)."""
    add_d2align_config(cfg)
    if "CPM_RCNN" in cfg.MODEL:
        return
    _C = cfg.MODEL.CPM_RCNN = CN()
    # N, stages of the Cascade Mapping Module (eq. 1-2); 1 = the Grid R-CNN baseline; >= 1.
    _C.NUM_STAGES = 3
    # M_j, mapping ratio of stage j: the heatmap of stage j covers the RoI B_j scaled by this
    # factor about its centre (Grid R-CNN's extended region mapping is 2); N values >= 1.
    _C.MAPPING_RATIOS = [2.0, 1.5, 1.25]
    # S_j, IoU threshold of stage j: a box trains stage j's grid branch if its IoU with a GT
    # is >= this (§3.4: {0.5, 0.6, 0.7}); N values in (0, 1).
    _C.IOU_THRESHOLDS = [0.5, 0.6, 0.7]
    # omega, fixed weight of the grid branch's BCE loss (eq. 2); beta_j = 0.5^(j-1) is applied
    # on top (§3.4: beta_1 = 1, halved per stage). 15 as Grid R-CNN (mmdetection); >= 0.
    _C.GRID_LOSS_WEIGHT = 15.0
    # Which stage's boxes the detector returns at inference (Table 3's "test stage"), 1-based;
    # 0 = the last stage. The ISM / RSM always score the returned boxes.
    _C.TEST_STAGE = 0
    # gamma of the fused score (eq. 4): (cls x ISM)^gamma x RSM^(1 - gamma); in [0, 1].
    _C.FUSED_SCORE_GAMMA = 0.8
    # What ranks the detections at inference: "fused" (eq. 4, the paper's) or "cls" (the
    # classification confidence alone, the same boxes: the baseline the fused score is claimed
    # to beat). The ISM / RSM scores are returned either way.
    _C.TEST_SCORE = "fused"
    # Training: append each image's ground-truth boxes to the candidates of every stage after
    # the first (the first stage's sampled proposals hold them already), as the official code
    # does, so that the later stages (and the ISM / RSM on the last one) have samples from the
    # first iteration. False: the later stages see only the previous stage's decoded boxes.
    _C.ADD_GT_TO_STAGES = True

    # The grid branch g_j (§3.1, after Grid R-CNN), one per stage.
    _C.GRID_HEAD = CN()
    # G, grid points per box: a sqrt(G) x sqrt(G) grid over the box, borders included; a
    # square >= 4 (Grid R-CNN's 3x3 = 9).
    _C.GRID_HEAD.NUM_POINTS = 9
    # RoIAlign of the grid branch: 14x14 features (§3.4); the heatmaps are 2 x 14 = 28 wide
    # (one stride-2 conv to 7x7, then two 2x deconvolutions).
    _C.GRID_HEAD.POOLER_RESOLUTION = 14
    _C.GRID_HEAD.POOLER_SAMPLING_RATIO = 0
    _C.GRID_HEAD.POOLER_TYPE = "ROIAlignV2"
    # Conv tower: NUM_CONVS plain 3x3 convs (padding 1, the first of stride 2) of
    # POINT_CHANNELS x G channels, as Grid R-CNN; NORM "" or "GN" (groups = G).
    _C.GRID_HEAD.NUM_CONVS = 8
    _C.GRID_HEAD.POINT_CHANNELS = 64
    _C.GRID_HEAD.NORM = "GN"
    # Radius, in heatmap cells, of the disc of positive pixels around each target point; > 0.
    _C.GRID_HEAD.TARGET_RADIUS = 1.0

    # IoU Scoring Module (§3.3, eq. 3 and 7): the shared IoU head (MODEL.ROI_IOU_HEAD) on the
    # last stage's 7x7 grid features of the final boxes.
    _C.ISM = CN()
    _C.ISM.ENABLED = True
    # L of eq. 7: "l2" (the paper's), "l1" or "smooth_l1" (Table 5).
    _C.ISM.LOSS_TYPE = "l2"
    _C.ISM.LOSS_WEIGHT = 1.0  # alpha_2 (eq. 6); >= 0
    # Resampling Scoring Module (§3.3, Fig. 4b): a classifier like the classification branch,
    # trained on the final boxes (positives) and the RPN proposals' negatives.
    _C.RSM = CN()
    _C.RSM.ENABLED = True
    _C.RSM.LOSS_WEIGHT = 1.0  # alpha_1 (eq. 6); >= 0


def check_cpm_rcnn_config(cfg: CN) -> None:
    """Raise ValueError, naming the key, if a CPM R-CNN setting is invalid."""
    c, k = cfg.MODEL.CPM_RCNN, "MODEL.CPM_RCNN."
    n = c.NUM_STAGES
    check_config(isinstance(n, int) and n >= 1, k + "NUM_STAGES", n, "must be an int >= 1")
    check_config(
        len(c.MAPPING_RATIOS) == n and all(r >= 1 for r in c.MAPPING_RATIOS),
        k + "MAPPING_RATIOS",
        list(c.MAPPING_RATIOS),
        f"must hold NUM_STAGES = {n} ratios, each >= 1",
    )
    check_config(
        len(c.IOU_THRESHOLDS) == n and all(0 < t < 1 for t in c.IOU_THRESHOLDS),
        k + "IOU_THRESHOLDS",
        list(c.IOU_THRESHOLDS),
        f"must hold NUM_STAGES = {n} thresholds, each in (0, 1)",
    )
    check_config(
        c.GRID_LOSS_WEIGHT >= 0, k + "GRID_LOSS_WEIGHT", c.GRID_LOSS_WEIGHT, "must be >= 0"
    )
    check_config(
        isinstance(c.TEST_STAGE, int) and 0 <= c.TEST_STAGE <= n,
        k + "TEST_STAGE",
        c.TEST_STAGE,
        f"must be 0 (the last stage) or a stage in [1, NUM_STAGES = {n}]",
    )
    check_config(
        0 <= c.FUSED_SCORE_GAMMA <= 1,
        k + "FUSED_SCORE_GAMMA",
        c.FUSED_SCORE_GAMMA,
        "must be in [0, 1]",
    )
    check_choice(k + "TEST_SCORE", c.TEST_SCORE, TEST_SCORES)
    g, kg = c.GRID_HEAD, k + "GRID_HEAD."
    side = math.isqrt(g.NUM_POINTS) if isinstance(g.NUM_POINTS, int) and g.NUM_POINTS > 0 else 0
    check_config(
        side >= 2 and side * side == g.NUM_POINTS,
        kg + "NUM_POINTS",
        g.NUM_POINTS,
        "must be a square >= 4 (a sqrt(G) x sqrt(G) grid over the box)",
    )
    check_config(
        isinstance(g.POOLER_RESOLUTION, int)
        and g.POOLER_RESOLUTION >= 2
        and g.POOLER_RESOLUTION % 2 == 0,
        kg + "POOLER_RESOLUTION",
        g.POOLER_RESOLUTION,
        "must be an even int >= 2 (the first conv halves it)",
    )
    check_config(g.NUM_CONVS >= 1, kg + "NUM_CONVS", g.NUM_CONVS, "must be >= 1")
    check_config(g.POINT_CHANNELS >= 1, kg + "POINT_CHANNELS", g.POINT_CHANNELS, "must be >= 1")
    check_choice(kg + "NORM", g.NORM, ("", "GN"))
    check_config(g.TARGET_RADIUS > 0, kg + "TARGET_RADIUS", g.TARGET_RADIUS, "must be > 0")
    check_choice(k + "ISM.LOSS_TYPE", c.ISM.LOSS_TYPE, IOU_LOSS_TYPES)
    for key in ("ISM.LOSS_WEIGHT", "RSM.LOSS_WEIGHT"):
        value = c[key.split(".")[0]].LOSS_WEIGHT
        check_config(value >= 0, k + key, value, "must be >= 0")
