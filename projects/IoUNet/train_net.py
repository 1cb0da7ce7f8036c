#!/usr/bin/env python
"""Train or evaluate IoU-Net (and its FPN baseline / standalone IoU-Net) with detectron2.

    python projects/IoUNet/train_net.py \
        --config-file projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml
    python projects/IoUNet/train_net.py --config-file <config> --eval-only \
        MODEL.WEIGHTS <checkpoint> MODEL.IOU_NET.NMS_TYPE standard \
        MODEL.IOU_NET.REFINE.ENABLED False

`--num-gpus`, `--resume` and trailing `KEY VALUE` overrides behave as in detectron2's
`tools/train_net.py`.
"""

from d2align.engine import launch_from_command_line
from d2align.projects.iou_net import add_iou_net_config

if __name__ == "__main__":
    launch_from_command_line(config_hooks=[add_iou_net_config])
