"""Offset Bin Classification (Qiu et al., "Offset Bin Classification Network for Accurate
Object Detection", CVPR 2020) on detectron2.

Importing the package registers, in d2align's BOX_PREDICTOR_REGISTRY
(`MODEL.ROI_BOX_HEAD.PREDICTOR` of `D2AlignStandardROIHeads` / `D2AlignCascadeROIHeads`),
`OffsetBinOutputLayers` (the method) and `L2RegressionOutputLayers` (Table 2's L2 baseline).
The bin coder itself is the shared `d2align.modeling.bin_coder.OffsetBinCoder`.
"""

from .config import DECODINGS, add_offset_bin_config, check_offset_bin_config
from .predictor import OffsetBinOutputLayers, offset_bin_coder_from_config
from .regression import L2RegressionOutputLayers

__all__ = [
    "DECODINGS",
    "add_offset_bin_config",
    "check_offset_bin_config",
    "OffsetBinOutputLayers",
    "offset_bin_coder_from_config",
    "L2RegressionOutputLayers",
]
