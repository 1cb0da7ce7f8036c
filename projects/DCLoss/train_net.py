#!/usr/bin/env python
"""Train or evaluate a DC Loss RetinaNet (detectron2's standard command line).

    python projects/DCLoss/train_net.py \
        --config-file projects/DCLoss/configs/shapes/iac_dc_clnms_R18_FPN_scratch.yaml
    python projects/DCLoss/train_net.py --config-file <config> --eval-only \
        MODEL.WEIGHTS <OUTPUT_DIR>/model_final.pth

Trailing `KEY VALUE` pairs override the config, e.g. `MODEL.DC_LOSS.IAC.ALPHA 0.25` or
`MODEL.D2ALIGN_RETINANET.NMS_TYPE standard`.
"""

from d2align.engine import launch_from_command_line
from d2align.projects.dc_loss import add_dc_loss_config

if __name__ == "__main__":
    launch_from_command_line(config_hooks=[add_dc_loss_config])
