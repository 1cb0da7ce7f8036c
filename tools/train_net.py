#!/usr/bin/env python
"""Train or evaluate a stock detectron2 model (the baselines) with d2align's trainer.

Same command line as detectron2's tools/train_net.py, e.g.
    python tools/train_net.py --config-file configs/shapes/faster_rcnn_R18_FPN_scratch.yaml
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
"""

from d2align.engine import launch_from_command_line

if __name__ == "__main__":
    launch_from_command_line()
