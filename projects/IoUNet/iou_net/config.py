"""Config keys of IoU-Net (Jiang et al., ECCV 2018), under `MODEL.IOU_NET`; the IoU head's
under the shared `MODEL.ROI_IOU_HEAD` (d2align.modeling.FCIoUHead), set to the paper's values.

Paper symbols in the comments; defaults are the paper's (§3.1, §3.4) where it gives a value.
"""

from detectron2.config import CfgNode as CN

from d2align.config import add_d2align_config, add_nms_keys

# the NMS types of IoU-Net's post-processing (`d2align.modeling.per_class_nms`)
NMS_TYPES = ("standard", "soft_linear", "soft_gaussian", "cl_balanced", "iou_guided")


def add_iou_net_config(cfg: CN) -> None:
    """Add the IoU-Net keys to `cfg` in place (idempotent)."""
    add_d2align_config(cfg)
    if "IOU_NET" in cfg.MODEL:
        return
    _C = cfg.MODEL.IOU_NET = CN()

    # ---- IoU predictor (§3.1, §3.4): PrRoI-pooled FPN features -> 2 FC -> one IoU per class;
    # the head is the shared MODEL.ROI_IOU_HEAD node
    head = cfg.MODEL.ROI_IOU_HEAD
    head.NAME = "FCIoUHead"
    head.FC_DIMS = [1024, 1024]  # the "two-layer feedforward network"
    # "zero-mean Gaussian with standard deviation 0.01 or 0.001": hidden FCs / output layer
    head.FC_INIT_STD = 0.01
    head.PRED_INIT_STD = 0.001
    head.CLS_AGNOSTIC = False  # "class-aware IoU predictors"
    _C.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # PrRoIPool is what makes the predicted IoU differentiable w.r.t. the box (§3.3); any
    # detectron2 ROIPooler type is accepted for ablations, but not with REFINE.ENABLED
    _C.POOLER_TYPE = "PrRoIPool"
    _C.POOLER_RESOLUTION = 7
    _C.POOLER_SAMPLING_RATIO = 0

    # ---- training of the IoU predictor (§3.1, §3.4)
    _C.IOU_LOSS_WEIGHT = 1.0
    _C.IOU_LOSS_TYPE = "smooth_l1"  # paper: smooth-L1; "l1" / "l2" for ablations
    _C.IOU_LOSS_BETA = 1.0  # smooth-L1 transition point (paper: "smooth-L1", no value)
    _C.NUM_JITTER_SAMPLES = 128  # jittered GT boxes per image (paper: no value)
    _C.JITTER = CN()
    _C.JITTER.MIN_IOU = 0.5  # Omega_train; IoU targets [MIN_IOU, 1] are mapped to [-1, 1]
    _C.JITTER.NUM_BINS = 20  # IoU bins filled equally ("uniformly w.r.t. the IoU")
    _C.JITTER.SCALE_RANGE = (0.5, 2.0)  # box scale factor, log-uniform
    _C.JITTER.SHIFT_RANGE = 0.3  # center shift, fraction of the box width / height
    _C.JITTER.ASPECT_RANGE = (0.5, 2.0)  # aspect-ratio factor, log-uniform

    # ---- inference (§3.2, §3.4): NMS, then refinement of the most confident boxes. The NMS
    # keys are d2align's (`add_nms_keys`): "iou_guided" (Algorithm 1: rank by predicted IoU,
    # keep the cluster's max score) by default, "standard" (classification score), Soft-NMS
    # and CL-balanced NMS for comparison
    add_nms_keys(_C, "iou_guided")
    _C.NMS_THRESH = 0.5  # Omega_nms (N_t of linear Soft-NMS)
    _C.REFINE = CN()
    _C.REFINE.ENABLED = True  # optimization-based refinement (Algorithm 2)
    _C.REFINE.STEP_SIZE = 0.5  # lambda
    _C.REFINE.OMEGA1 = 0.001  # Omega_1, early-stop threshold
    _C.REFINE.OMEGA2 = -0.01  # Omega_2 < 0, localization degeneration tolerance
    _C.REFINE.MAX_ITERS = 5  # T
    _C.REFINE.TOPK = 100  # the most confident boxes after NMS that are refined
