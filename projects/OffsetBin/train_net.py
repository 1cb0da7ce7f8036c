#!/usr/bin/env python
"""Train or evaluate an Offset Bin Classification detector (detectron2's standard command line).

    python projects/OffsetBin/train_net.py --config-file \
        projects/OffsetBin/configs/shapes/bin_expectation_hierarchical_R18_FPN_scratch.yaml
    python projects/OffsetBin/train_net.py --config-file <config> --eval-only \
        MODEL.WEIGHTS <OUTPUT_DIR>/model_final.pth

Trailing `KEY VALUE` pairs override the config, e.g. `MODEL.OFFSET_BIN.DECODE argmax`.
"""

from d2align.engine import launch_from_command_line
from d2align.projects.offset_bin import add_offset_bin_config

if __name__ == "__main__":
    launch_from_command_line(config_hooks=[add_offset_bin_config])
