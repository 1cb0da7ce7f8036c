#!/usr/bin/env python
"""Train or evaluate a CPM R-CNN (or its Grid R-CNN baseline) with detectron2's command line.

    python projects/CPMRCNN/train_net.py --config-file \
        projects/CPMRCNN/configs/shapes/cpm_rcnn_R18_FPN_scratch.yaml
    python projects/CPMRCNN/train_net.py --config-file <config> --eval-only \
        MODEL.WEIGHTS <OUTPUT_DIR>/model_final.pth MODEL.CPM_RCNN.TEST_STAGE 2

Trailing `KEY VALUE` pairs override the config, e.g. `MODEL.CPM_RCNN.FUSED_SCORE_GAMMA 1.0`.
"""

from d2align.engine import launch_from_command_line
from d2align.projects.cpm_rcnn import add_cpm_rcnn_config

if __name__ == "__main__":
    launch_from_command_line(config_hooks=[add_cpm_rcnn_config])
