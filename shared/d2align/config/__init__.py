"""Config keys shared by every d2align project, and the one helper that checks values."""

from .checks import check_choice, check_config
from .common_checks import check_common_config
from .defaults import add_d2align_config, add_nms_keys

__all__ = [
    "add_d2align_config",
    "add_nms_keys",
    "check_choice",
    "check_common_config",
    "check_config",
]
