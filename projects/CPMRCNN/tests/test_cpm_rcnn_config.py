"""Every CPM R-CNN config merges and passes the checks; bad MODEL.CPM_RCNN values are refused
naming the key."""

import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from d2align.engine import build_config
from d2align.projects.cpm_rcnn import add_cpm_rcnn_config, check_cpm_rcnn_config
from d2align.testing import ROOT

CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, "projects/CPMRCNN/configs/**/*.yaml"), recursive=True)
)
SHAPES = os.path.join(ROOT, "projects/CPMRCNN/configs/shapes/cpm_rcnn_R18_FPN_scratch.yaml")


def _cfg(opts=()):
    return build_config(SHAPES, list(opts), [add_cpm_rcnn_config])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_merges_and_passes_the_checks(path):
    cfg = build_config(path, [], [add_cpm_rcnn_config])
    check_cpm_rcnn_config(cfg)
    assert cfg.MODEL.ROI_HEADS.NAME == "CPMROIHeads"
    assert cfg.MODEL.ROI_BOX_HEAD.PREDICTOR == "ClassificationOutputLayers"
    assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.3 and cfg.TEST.DETECTIONS_PER_IMAGE == 96


def test_leaves_have_distinct_output_dirs():
    leaves = [p for p in CONFIGS if "Base-" not in os.path.basename(p)]
    dirs = [build_config(p, [], [add_cpm_rcnn_config]).OUTPUT_DIR for p in leaves]
    assert len(set(dirs)) == len(dirs)


def test_paper_defaults():
    cfg = get_cfg()
    add_cpm_rcnn_config(cfg)
    c = cfg.MODEL.CPM_RCNN
    assert (c.NUM_STAGES, list(c.MAPPING_RATIOS), list(c.IOU_THRESHOLDS)) == (
        3,
        [2.0, 1.5, 1.25],
        [0.5, 0.6, 0.7],
    )
    assert c.FUSED_SCORE_GAMMA == 0.8 and c.ISM.LOSS_TYPE == "l2" and c.TEST_SCORE == "fused"
    assert c.GRID_HEAD.NUM_POINTS == 9 and c.GRID_HEAD.POOLER_RESOLUTION == 14
    check_cpm_rcnn_config(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.CPM_RCNN.NUM_STAGES", "0", "MODEL.CPM_RCNN.NUM_STAGES = 0"),
        ("MODEL.CPM_RCNN.MAPPING_RATIOS", "[2.0, 1.5]", "MODEL.CPM_RCNN.MAPPING_RATIOS"),
        ("MODEL.CPM_RCNN.MAPPING_RATIOS", "[2.0, 1.5, 0.5]", "MODEL.CPM_RCNN.MAPPING_RATIOS"),
        ("MODEL.CPM_RCNN.IOU_THRESHOLDS", "[0.5, 0.6]", "MODEL.CPM_RCNN.IOU_THRESHOLDS"),
        ("MODEL.CPM_RCNN.IOU_THRESHOLDS", "[0.5, 0.6, 1.0]", "MODEL.CPM_RCNN.IOU_THRESHOLDS"),
        ("MODEL.CPM_RCNN.FUSED_SCORE_GAMMA", "1.5", "MODEL.CPM_RCNN.FUSED_SCORE_GAMMA = 1.5"),
        ("MODEL.CPM_RCNN.FUSED_SCORE_GAMMA", "-0.1", "MODEL.CPM_RCNN.FUSED_SCORE_GAMMA"),
        ("MODEL.CPM_RCNN.TEST_STAGE", "4", "MODEL.CPM_RCNN.TEST_STAGE = 4"),
        ("MODEL.CPM_RCNN.TEST_SCORE", "'iou'", "MODEL.CPM_RCNN.TEST_SCORE = 'iou'"),
        ("MODEL.CPM_RCNN.GRID_LOSS_WEIGHT", "-1.0", "MODEL.CPM_RCNN.GRID_LOSS_WEIGHT"),
        ("MODEL.CPM_RCNN.GRID_HEAD.NUM_POINTS", "8", "MODEL.CPM_RCNN.GRID_HEAD.NUM_POINTS = 8"),
        ("MODEL.CPM_RCNN.GRID_HEAD.POOLER_RESOLUTION", "7", "POOLER_RESOLUTION = 7"),
        ("MODEL.CPM_RCNN.GRID_HEAD.NORM", "'BN'", "MODEL.CPM_RCNN.GRID_HEAD.NORM = 'BN'"),
        ("MODEL.CPM_RCNN.GRID_HEAD.TARGET_RADIUS", "0.0", "TARGET_RADIUS = 0.0"),
        ("MODEL.CPM_RCNN.ISM.LOSS_TYPE", "'l3'", "MODEL.CPM_RCNN.ISM.LOSS_TYPE = 'l3'"),
        ("MODEL.CPM_RCNN.RSM.LOSS_WEIGHT", "-1.0", "MODEL.CPM_RCNN.RSM.LOSS_WEIGHT = -1.0"),
    ],
)
def test_bad_values_are_refused_naming_the_key(key, value, message):
    cfg = _cfg([key, value])
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
        check_cpm_rcnn_config(cfg)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(cfg)  # the model refuses it too


def test_the_box_predictor_must_be_the_classifier():
    cfg = _cfg(["MODEL.ROI_BOX_HEAD.PREDICTOR", "FastRCNNOutputLayers"])
    with pytest.raises(
        ValueError, match=r"MODEL\.ROI_BOX_HEAD\.PREDICTOR = 'FastRCNNOutputLayers'"
    ):
        build_model(cfg)
