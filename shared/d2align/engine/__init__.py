"""Training and evaluation entry points shared by every d2align project."""

from .launcher import (
    build_config,
    launch_from_command_line,
    load_config,
    main,
    setup,
    write_final_results,
)
from .trainer import Trainer, check_num_classes

__all__ = [
    "Trainer",
    "build_config",
    "check_num_classes",
    "launch_from_command_line",
    "load_config",
    "main",
    "setup",
    "write_final_results",
]
