"""`add_d2align_config`: the keys every d2align project has, under `D2ALIGN`, and those of
the shared modeling pieces, beside the detectron2 nodes they extend.

A project's own keys live in its `add_<project>_config`, which calls this first.
"""
from detectron2.config import CfgNode as CN


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

    # Keys of the shared modeling pieces (d2align.modeling), beside detectron2's own nodes.
    # The box predictor of the d2align ROI heads (BOX_PREDICTOR_REGISTRY); the default is
    # detectron2's FastRCNNOutputLayers.
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "FastRCNNOutputLayers"
    # The localization-quality head on pooled RoI features (ROI_IOU_HEAD_REGISTRY,
    # build_iou_head): IoU-Net's IoU predictor, CPM R-CNN's IoU Scoring Module. The defaults
    # are IoU-Net's (two hidden FCs of 1024, Gaussian init with std 0.01 / 0.001).
    cfg.MODEL.ROI_IOU_HEAD = CN()
    cfg.MODEL.ROI_IOU_HEAD.NAME = "FCIoUHead"
    cfg.MODEL.ROI_IOU_HEAD.FC_DIMS = [1024, 1024]  # widths of the hidden FC layers
    cfg.MODEL.ROI_IOU_HEAD.FC_INIT_STD = 0.01  # std of the hidden layers' weights
    cfg.MODEL.ROI_IOU_HEAD.PRED_INIT_STD = 0.001  # std of the output layer's weights
    cfg.MODEL.ROI_IOU_HEAD.CLS_AGNOSTIC = False  # one IoU per box instead of one per class
