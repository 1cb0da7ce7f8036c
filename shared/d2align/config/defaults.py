"""`add_d2align_config`: the keys every d2align project has, under `D2ALIGN`, and those of
the shared modeling pieces, beside the detectron2 nodes they extend.

A project's own keys live in its `add_<project>_config`, which calls this first.
"""

from detectron2.config import CfgNode as CN


def add_nms_keys(node: CN, nms_type: str) -> None:
    """The NMS keys of a detector's inference, the same under every node that has them
    (`MODEL.D2ALIGN_ROI_HEADS`, `MODEL.D2ALIGN_RETINANET`, `MODEL.IOU_NET`), read by
    `d2align.modeling.nms_settings_from_config` and dispatched by `per_class_nms`."""
    # "standard" (detectron2's), "soft_linear" / "soft_gaussian" (Soft-NMS), "cl_balanced"
    # (DC Loss's CL-balanced NMS, eq. 6-7), "iou_guided" (IoU-Net's Algorithm 1; heads that
    # predict IoU only)
    node.NMS_TYPE = nms_type
    node.SOFT_NMS_SIGMA = 0.5  # sigma of Gaussian Soft-NMS, > 0
    node.SOFT_NMS_SCORE_THRESH = 0.001  # Soft-NMS drops boxes whose decayed score falls below
    node.CL_NMS_TEMPERATURE = 1.0  # temperature of eq. 6's softmax over the cluster's scores
    node.CL_NMS_DIS_SCALE = 1.0  # weight of eq. 7's centre term dis against the score p
    # f of eq. 6, whose softmax weights the cluster's centres: "logit" (log(p / (1 - p)), the
    # pre-activation the paper's f most plausibly names, kept apart from the probability p of
    # eq. 7) or "probability" (p itself: nearly uniform weights for p in [0, 1]).
    node.CL_NMS_CENTER_WEIGHTS = "logit"


def add_d2align_config(cfg: CN) -> None:
    """Add the shared d2align keys to `cfg` in place (idempotent)."""
    if "D2ALIGN" in cfg:
        return
    cfg.D2ALIGN = CN()
    # A user's own COCO-format data, with no code to write: when TRAIN_JSON / TEST_JSON are set,
    # they are registered as "d2align_custom_train" / "d2align_custom_test" (class names from
    # the JSON) and replace DATASETS.TRAIN / DATASETS.TEST.
    cfg.D2ALIGN.DATA = CN()
    cfg.D2ALIGN.DATA.TRAIN_JSON = ""
    cfg.D2ALIGN.DATA.TRAIN_IMAGES = ""
    cfg.D2ALIGN.DATA.TEST_JSON = ""
    cfg.D2ALIGN.DATA.TEST_IMAGES = ""
    # Write `final_results.json` (AP columns, train s/iter, inference s/image) into OUTPUT_DIR
    # after the last evaluation; read by tools/compare.py.
    cfg.D2ALIGN.WRITE_RESULTS = True
    # Loading MODEL.WEIGHTS (d2align.checkpoint.D2AlignCheckpointer) is refused when fewer than
    # this fraction (in [0, 1]) of the model's weights (state_dict entries) are found in the
    # checkpoint with the right shape. TRAIN: initialising a training; 0.5 accepts a
    # backbone-only checkpoint (an ImageNet ResNet-50 holds ~90% of a Faster R-CNN R-50-FPN's
    # entries) and refuses a file that matches (almost) nothing. EVAL: --eval-only and --resume,
    # where every weight must come from the checkpoint (a head left at its initialisation
    # evaluates to AP 0). 0 loads any checkpoint, partially, on purpose.
    cfg.D2ALIGN.CHECKPOINT = CN()
    cfg.D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_TRAIN = 0.5
    cfg.D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_EVAL = 1.0

    # Keys of the shared modeling pieces (d2align.modeling), beside detectron2's own nodes.
    # The box predictor of the d2align ROI heads (BOX_PREDICTOR_REGISTRY); the default is
    # detectron2's FastRCNNOutputLayers.
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "FastRCNNOutputLayers"
    # D2AlignCascadeROIHeads: one predictor name per cascade stage (e.g. offset bins at stage 1
    # only); empty: every stage uses MODEL.ROI_BOX_HEAD.PREDICTOR.
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS = []
    # The localization-quality head on pooled RoI features (ROI_IOU_HEAD_REGISTRY,
    # build_iou_head): IoU-Net's IoU predictor, CPM R-CNN's IoU Scoring Module. The defaults
    # are IoU-Net's (two hidden FCs of 1024, Gaussian init with std 0.01 / 0.001).
    cfg.MODEL.ROI_IOU_HEAD = CN()
    cfg.MODEL.ROI_IOU_HEAD.NAME = "FCIoUHead"
    cfg.MODEL.ROI_IOU_HEAD.FC_DIMS = [1024, 1024]  # widths of the hidden FC layers
    cfg.MODEL.ROI_IOU_HEAD.FC_INIT_STD = 0.01  # std of the hidden layers' weights
    cfg.MODEL.ROI_IOU_HEAD.PRED_INIT_STD = 0.001  # std of the output layer's weights
    cfg.MODEL.ROI_IOU_HEAD.CLS_AGNOSTIC = False  # one IoU per box instead of one per class
    # Per-class NMS of D2AlignStandardROIHeads / D2AlignCascadeROIHeads at inference (the
    # heads that keep detectron2's Fast R-CNN inference; IoU-Net and CPM R-CNN have their own):
    # "standard" (detectron2's, the default), "soft_linear" / "soft_gaussian" (Soft-NMS),
    # "cl_balanced" (DC Loss's CL-balanced NMS, eq. 6-7). The IoU threshold is
    # MODEL.ROI_HEADS.NMS_THRESH_TEST; the other parameters as under MODEL.D2ALIGN_RETINANET.
    cfg.MODEL.D2ALIGN_ROI_HEADS = CN()
    add_nms_keys(cfg.MODEL.D2ALIGN_ROI_HEADS, "standard")
    # D2AlignRetinaNet (d2align.modeling.retinanet): detectron2's RetinaNet with overridable
    # assignment, losses and NMS, beside MODEL.RETINANET (whose keys it keeps). With these
    # defaults it is exactly detectron2's RetinaNet.
    cfg.MODEL.D2ALIGN_RETINANET = CN()
    _R = cfg.MODEL.D2ALIGN_RETINANET
    # Box regression loss: "" = MODEL.RETINANET.BBOX_REG_LOSS_TYPE; else one of detectron2's
    # "smooth_l1", "giou", "diou", "ciou", or "balanced_l1" (Libra R-CNN, on the box deltas).
    _R.BBOX_REG_LOSS_TYPE = ""
    # Balanced L1 alpha, gamma, beta (each > 0). beta = 0.11 suits RetinaNet's unnormalised
    # deltas (MODEL.RETINANET.BBOX_REG_WEIGHTS (1, 1, 1, 1)), as in Libra RetinaNet.
    _R.BALANCED_L1 = CN()
    _R.BALANCED_L1.ALPHA = 0.5
    _R.BALANCED_L1.GAMMA = 1.5
    _R.BALANCED_L1.BETA = 0.11
    # Weights (>= 0) of the classification and box regression losses.
    _R.CLS_LOSS_WEIGHT = 1.0
    _R.BOX_REG_LOSS_WEIGHT = 1.0
    # Per-class NMS at inference (`add_nms_keys`); the IoU threshold is
    # MODEL.RETINANET.NMS_THRESH_TEST (N_t of linear Soft-NMS; CL-balanced's cluster threshold).
    add_nms_keys(_R, "standard")
