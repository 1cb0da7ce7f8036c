"""The five paper projects, each installed as d2align.projects.<name> from
projects/<Name>/<name>/."""
import importlib
from pathlib import Path
from typing import Callable, List

# folder under projects/ -> its package (the snake_case of the folder); setup.py has the same map
PROJECT_PACKAGES = {
    "CPMRCNN": "cpm_rcnn",
    "IoUNet": "iou_net",
    "MutualGuidance": "mutual_guidance",
    "OffsetBin": "offset_bin",
    "DCLoss": "dc_loss",
}


def config_hooks_for(config_file: str) -> List[Callable]:
    """The `add_<name>_config` a config file needs: its project's, for a file under
    `projects/<Name>/`; none for any other file (detectron2's and d2align's keys suffice)."""
    parts = Path(config_file).resolve().parts
    for i, part in enumerate(parts[:-1]):
        if part == "projects" and parts[i + 1] in PROJECT_PACKAGES:
            name = PROJECT_PACKAGES[parts[i + 1]]
            module = importlib.import_module(f"d2align.projects.{name}")
            return [getattr(module, f"add_{name}_config")]
    return []
