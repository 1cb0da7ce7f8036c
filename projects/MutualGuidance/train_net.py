#!/usr/bin/env python
"""Train or evaluate a Mutual Guidance RetinaNet (detectron2's standard command line).

    python projects/MutualGuidance/train_net.py \
        --config-file projects/MutualGuidance/configs/shapes/mutual_guidance_R18_FPN_scratch.yaml
    python projects/MutualGuidance/train_net.py --config-file <config> --eval-only \
        MODEL.WEIGHTS <OUTPUT_DIR>/model_final.pth

Trailing `KEY VALUE` pairs override the config, e.g. `MODEL.MUTUAL_GUIDANCE.ASSIGNMENT static`.
"""

from d2align.engine import launch_from_command_line
from d2align.projects.mutual_guidance import add_mutual_guidance_config

if __name__ == "__main__":
    launch_from_command_line(config_hooks=[add_mutual_guidance_config])
