"""The paper projects, each installed as `d2align.projects.<package>` from
`projects/<Folder>/<package>/`.

A project's package is the one folder with an `__init__.py` inside `projects/<Folder>/` other
than `tests/` (`projects/IoUNet/iou_net/`, `projects/MutualGuidance/mutual_guidance/`, ...).
That rule is the only map from folders to packages: `setup.py` installs what it finds, and
`config_hooks_for` finds a config file's project by it, so a new project needs nothing beyond
its folder (and a reinstall, which `scripts/env.sh` does when a package appears).
"""

import importlib
from pathlib import Path
from typing import Callable, Dict, List, Union

NOT_PACKAGES = ("tests",)


def project_package_in(folder: Union[str, Path]) -> str:
    """The package name of the project in `folder` (a `projects/<Folder>/` directory).

    Raises:
        ValueError: when the folder holds no package or more than one.
    """
    folder = Path(folder)
    found = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and (p / "__init__.py").is_file() and p.name not in NOT_PACKAGES
    )
    if len(found) != 1:
        raise ValueError(
            f"{folder}: a project folder holds exactly one package (a folder with __init__.py, "
            f"besides tests/), found {found or 'none'}"
        )
    return found[0]


def discover_projects(projects_root: Union[str, Path]) -> Dict[str, str]:
    """Map of project folder name -> package name for every project under `projects_root`;
    a folder without a package (a project not started) is left out."""
    out = {}
    for folder in sorted(Path(projects_root).iterdir()):
        if folder.is_dir() and any((p / "__init__.py").is_file() for p in folder.iterdir()):
            out[folder.name] = project_package_in(folder)
    return out


def config_hooks_for(config_file: str) -> List[Callable]:
    """The `add_<package>_config` a config file needs: its project's, for a file under
    `projects/<Folder>/configs/`; none for any other file (detectron2's and d2align's keys
    suffice)."""
    parts = Path(config_file).resolve().parts
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] == "projects" and parts[i + 2] == "configs":
            name = project_package_in(Path(*parts[: i + 2]))
            module = importlib.import_module(f"d2align.projects.{name}")
            return [getattr(module, f"add_{name}_config")]
    return []
