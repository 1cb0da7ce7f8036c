"""Config keys of Offset Bin Classification (Qiu et al., CVPR 2020), under `MODEL.OFFSET_BIN`.

Paper symbols in the comments; the defaults are the paper's full method (§4: a = 3, n = 20,
lambda_bin = 1, expectation decoding, K = 2 stages of hierarchical focusing with a_2 = 0.15).
The predictor is selected by `MODEL.ROI_BOX_HEAD.PREDICTOR: "OffsetBinOutputLayers"` in the
d2align ROI heads; class-agnostic or per-class bins follow detectron2's
`MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG` (the paper's score vector is s in R^{4n}:
class-agnostic), and the offsets are detectron2's weighted deltas
(`MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS`, or each Cascade stage's `BBOX_REG_WEIGHTS`).
"""

from detectron2.config import CfgNode as CN

from d2align.config import add_d2align_config, check_choice, check_config
from d2align.modeling.bin_coder import bin_width

DECODINGS = ("argmax", "expectation")


def add_offset_bin_config(cfg: CN) -> None:
    """Add the Offset Bin keys (and d2align's shared keys) to `cfg` in place (idempotent)."""
    add_d2align_config(cfg)
    if "OFFSET_BIN" in cfg.MODEL:
        return
    _C = cfg.MODEL.OFFSET_BIN = CN()
    # n = n_k, bins per offset at every stage (§4.1, Table 3: n_k = 20): m = n - 2 uniform bins
    # over (-a_k, a_k) plus the outer bins (-inf, -a_k] and [a_k, inf) (eq. 5, Fig. 4); > 2.
    _C.NUM_BINS = 20
    # a = a_1, the stage-1 offset range (-a, a) (eq. 5), in units of the weighted deltas; > 0.
    _C.OFFSET_RANGE = 3.0
    # How bin scores become an offset: "argmax" (representative of the best bin) or
    # "expectation" (softmax expectation of the representatives, eq. 10); every stage alike.
    _C.DECODE = "expectation"
    # K, stages of hierarchical focusing (§3.2.4, eq. 11); 1 = no focusing; >= 1.
    _C.NUM_STAGES = 2
    # a_2, ..., a_K: stage k's range (-a_k, a_k) lies within a stage-(k-1) bin, so
    # 0 < a_k < w_{k-1} = 2 a_{k-1} / (n - 2); K - 1 values (Table 3: a_2 = 0.15).
    _C.FOCUS_RANGES = [0.15]
    # lambda_bin, weight of the bin classification loss L_bin (eq. 9); >= 0.
    _C.LOSS_WEIGHT = 1.0


def check_offset_bin_config(cfg: CN) -> None:
    """Raise ValueError, naming the key, if an Offset Bin setting is invalid."""
    ob, k = cfg.MODEL.OFFSET_BIN, "MODEL.OFFSET_BIN."
    check_config(
        isinstance(ob.NUM_BINS, int) and ob.NUM_BINS > 2,
        k + "NUM_BINS",
        ob.NUM_BINS,
        "must be an int > 2 (m = n - 2 inner bins plus the two outer bins, eq. 5)",
    )
    check_config(ob.OFFSET_RANGE > 0, k + "OFFSET_RANGE", ob.OFFSET_RANGE, "must be > 0")
    check_choice(k + "DECODE", ob.DECODE, DECODINGS)
    check_config(
        isinstance(ob.NUM_STAGES, int) and ob.NUM_STAGES >= 1,
        k + "NUM_STAGES",
        ob.NUM_STAGES,
        "must be an int >= 1 (K stages of hierarchical focusing, 1 = none)",
    )
    check_config(
        len(ob.FOCUS_RANGES) == ob.NUM_STAGES - 1,
        k + "FOCUS_RANGES",
        ob.FOCUS_RANGES,
        f"must hold K - 1 = {ob.NUM_STAGES - 1} ranges a_2 .. a_K (MODEL.OFFSET_BIN.NUM_STAGES)",
    )
    previous = ob.OFFSET_RANGE
    for stage, a in enumerate(ob.FOCUS_RANGES, start=2):
        width = bin_width(ob.NUM_BINS, previous)
        check_config(
            0 < a < width,
            k + "FOCUS_RANGES",
            ob.FOCUS_RANGES,
            f"a_{stage} = {a} must lie in (0, w_{stage - 1}) = (0, {width:g}), the bin width of "
            f"stage {stage - 1}",
        )
        previous = a
    check_config(ob.LOSS_WEIGHT >= 0, k + "LOSS_WEIGHT", ob.LOSS_WEIGHT, "must be >= 0")
    weights = cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS
    check_config(
        len(weights) == 4,
        "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
        weights,
        "offset bins code the 4 offsets (tx, ty, tw, th) of axis-aligned boxes",
    )
