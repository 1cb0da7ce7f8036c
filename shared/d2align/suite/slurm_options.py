"""What the jobs of a suite ask SLURM for: `SlurmOptions`, from `tools/compare.py`'s
`--slurm-*` options or a suite file's `launcher:` section (see `d2align.suite.slurm`)."""

import dataclasses
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["LAUNCHER_KEYS", "SlurmOptions", "options_from_mapping"]


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """What every job of a suite asks SLURM for (`--slurm-*` options, or a suite file's
    `launcher:` section with these keys).

    Attributes:
        partition: the partition (None: the cluster's default).
        time_min: time limit of one job in minutes; submitit requeues a job shortly before it
            and the run resumes from its last checkpoint.
        gpus_per_run: GPUs on each node of a run: detectron2's `--num-gpus` (0: CPU).
        cpus_per_run: CPUs of each task (None: SLURM's default); the training's threads.
        mem_gb: memory of each node of a run in GB (None: SLURM's default).
        nodes_per_run: nodes of one training (detectron2's `--num-machines`).
        tasks_per_node: machines of the training on each node (1 on a real cluster; 2 on one
            node stands for two machines in a test).
        sbatch: extra `sbatch` flags, e.g. `--account=vision`, `--constraint=volta32gb`.
        log_dir: submitit's folder (job scripts, pickles, stdout / stderr of every task);
            None: `<suite output>/slurm`.
    """

    partition: Optional[str] = None
    time_min: int = 24 * 60
    gpus_per_run: int = 0
    cpus_per_run: Optional[int] = None
    mem_gb: Optional[float] = None
    nodes_per_run: int = 1
    tasks_per_node: int = 1
    sbatch: Tuple[str, ...] = ()
    log_dir: Optional[Path] = None

    def __post_init__(self):
        for key in ("time_min", "nodes_per_run", "tasks_per_node"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"launcher {key} must be an integer >= 1, got {value!r}")
        if not isinstance(self.gpus_per_run, int) or self.gpus_per_run < 0:
            raise ValueError(
                f"launcher gpus_per_run must be an integer >= 0, got {self.gpus_per_run!r}"
            )
        if self.cpus_per_run is not None and (
            not isinstance(self.cpus_per_run, int) or self.cpus_per_run < 1
        ):
            raise ValueError(
                f"launcher cpus_per_run must be an integer >= 1, got {self.cpus_per_run!r}"
            )
        if self.mem_gb is not None and not (
            isinstance(self.mem_gb, (int, float)) and 0 < self.mem_gb < float("inf")
        ):
            raise ValueError(f"launcher mem_gb must be a positive number, got {self.mem_gb!r}")
        for flag in self.sbatch:
            if not (isinstance(flag, str) and flag.startswith("--") and len(flag) > 2):
                raise ValueError(f"launcher sbatch flags look like --key=value, got {flag!r}")

    @property
    def machines(self) -> int:
        return self.nodes_per_run * self.tasks_per_node

    def with_overrides(self, **values) -> "SlurmOptions":
        """A copy with the values that are not None (the command line over the suite file)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def additional_parameters(self) -> Dict[str, Any]:
        """The extra `sbatch` flags as submitit's `slurm_additional_parameters`."""
        params: Dict[str, Any] = {}
        for flag in self.sbatch:
            key, _, value = flag[2:].partition("=")
            params[key.replace("-", "_")] = value if value else True
        return params


LAUNCHER_KEYS = tuple(f.name for f in dataclasses.fields(SlurmOptions))


def options_from_mapping(data: Mapping[str, Any], where: str) -> SlurmOptions:
    """`SlurmOptions` from a suite file's `launcher:` section (unknown keys are refused)."""
    unknown = sorted(set(data) - set(LAUNCHER_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown launcher key(s) {unknown}; known: {list(LAUNCHER_KEYS)}"
        )
    values = dict(data)
    if "sbatch" in values:
        if not isinstance(values["sbatch"], (list, tuple)):
            raise ValueError(f"{where}: launcher sbatch must be a list of flags")
        values["sbatch"] = tuple(values["sbatch"])
    if values.get("log_dir") is not None:
        values["log_dir"] = Path(values["log_dir"])
    try:
        return SlurmOptions(**values)
    except ValueError as e:
        raise ValueError(f"{where}: {e}")
