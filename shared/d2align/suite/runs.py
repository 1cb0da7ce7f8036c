"""The runs of a suite: one training (or evaluation) process per row and seed.

Each `Run` knows its config, the overrides it runs with, its OUTPUT_DIR and its command line.
A run's OUTPUT_DIR is its config's (relative paths are relative to the checkout), or
`<OUTPUT_DIR>/seed<s>` when the suite has seeds, so that results are shared between suites
and with `train_net.py` run by hand. A run records what it was started with in
`<OUTPUT_DIR>/suite_run.json`; a folder that holds another run's files is refused rather than
mixed up.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .spec import Suite

__all__ = [
    "read_results",
    "RESULTS_FILE",
    "STAMP_FILE",
    "Run",
    "check_output_dirs",
    "plan_runs",
    "runs_of",
    "slug",
    "train_script_for",
]

RESULTS_FILE = "final_results.json"
STAMP_FILE = "suite_run.json"
LOG_FILE = "train_log.txt"


def train_script_for(config: Path, root: Path) -> Path:
    """`projects/<Name>/train_net.py` for a config under `projects/<Name>/`, else
    `tools/train_net.py`."""
    try:
        parts = Path(config).resolve().relative_to(root.resolve()).parts
    except ValueError:
        parts = ()
    if len(parts) > 2 and parts[0] == "projects":
        return root / "projects" / parts[1] / "train_net.py"
    return root / "tools" / "train_net.py"


@dataclasses.dataclass(frozen=True)
class Run:
    """One process of a suite (hashable: every field is immutable).

    Attributes:
        label: the suite row it belongs to.
        config: config file (absolute).
        seed: the seed it overrides, or None for the config's own SEED.
        opts: every `KEY VALUE` override it runs with (SEED, OUTPUT_DIR, MODEL.WEIGHTS last).
        out_dir: its OUTPUT_DIR (absolute).
        max_iter: SOLVER.MAX_ITER of its config (for the progress line).
        weights_from: name of the run whose final model it evaluates (`--eval-only`), or None.
    """

    label: str
    config: Path
    seed: Optional[int]
    opts: Tuple[str, ...]
    out_dir: Path
    max_iter: int = 0
    weights_from: Optional[str] = None

    @property
    def name(self) -> str:
        return self.label if self.seed is None else f"{self.label} (seed {self.seed})"

    @property
    def eval_only(self) -> bool:
        return self.weights_from is not None

    @property
    def results_file(self) -> Path:
        return self.out_dir / RESULTS_FILE

    @property
    def log_file(self) -> Path:
        return self.out_dir / LOG_FILE

    @property
    def checkpoint_pointer(self) -> Path:
        """detectron2's `last_checkpoint` file: the name of the newest checkpoint, which
        `--resume` continues from."""
        return self.out_dir / "last_checkpoint"

    def command(
        self, python: str, root: Path, resume: bool = False, launch_args: Sequence[str] = ()
    ) -> List[str]:
        """The command line of the run's `train_net.py`; `launch_args` (`--num-gpus`,
        `--num-machines`, `--machine-rank`, `--dist-url`) go before the overrides."""
        cmd = [python, str(train_script_for(self.config, root)), "--config-file", str(self.config)]
        if self.eval_only:
            cmd.append("--eval-only")
        elif resume:
            cmd.append("--resume")
        return cmd + list(launch_args) + list(self.opts)

    def stamp(self, root: Path) -> dict:
        """What the run is: its config and opts, with paths inside the checkout relative to it
        (so that a moved checkout still recognises its runs)."""
        prefix = str(root.resolve()) + os.sep

        def rel(text: str) -> str:
            return text[len(prefix) :] if text.startswith(prefix) else text

        return {
            "config": rel(str(self.config)),
            "opts": [rel(o) for o in self.opts],
            "eval_only": self.eval_only,
        }

    @property
    def weights_file(self) -> Optional[Path]:
        """The MODEL.WEIGHTS an evaluation run reads (its last override), or None."""
        values = [v for k, v in zip(self.opts[::2], self.opts[1::2]) if k == "MODEL.WEIGHTS"]
        return Path(values[-1]) if self.eval_only and values else None

    def recorded_stamp(self) -> Optional[dict]:
        try:
            recorded = json.loads((self.out_dir / STAMP_FILE).read_text())
        except (OSError, ValueError):
            return None
        return recorded if isinstance(recorded, dict) else None

    def foreign_files(self, root: Path) -> Optional[str]:
        """Why `out_dir` holds another run's files, or None: its record (`suite_run.json`) is
        unreadable or names another config or other overrides, or its results were trained
        with settings that differ from this run's (the `config.yaml` detectron2 saved there:
        a training by hand into the folder)."""
        stamp_file = self.out_dir / STAMP_FILE
        recorded = self.recorded_stamp()
        if recorded is None and stamp_file.exists():
            return f"{stamp_file} is unreadable (damaged?): the folder's runs cannot be trusted"
        wanted = self.stamp(root)
        if recorded is not None and {k: recorded.get(k) for k in wanted} != wanted:
            return (
                f"{self.out_dir} holds a run of {recorded.get('config')} with overrides "
                f"{recorded.get('opts')} (see {stamp_file}), not {self.name} "
                f"({wanted['config']} with {list(self.opts)})"
            )
        if read_results(self.results_file) is not None:
            differences = self.config_differences()
            if differences:
                return (
                    f"{self.out_dir} holds results trained with other settings than {self.name} "
                    f"(its config.yaml against the run's config): " + "; ".join(differences)
                )
        return None

    def config_differences(self) -> List[str]:
        """`KEY: saved -> wanted` for each key whose value in the `config.yaml` that the
        training saved in `out_dir` differs from this run's config (keys only one of them has
        are new or removed options and are not compared; OUTPUT_DIR, MODEL.WEIGHTS and
        MODEL.DEVICE name places, not settings). Empty without a saved config."""
        import yaml

        from d2align.data.from_config import CUSTOM_TEST, CUSTOM_TRAIN
        from d2align.engine import build_config
        from d2align.projects import config_hooks_for

        saved_file = self.out_dir / "config.yaml"
        if not saved_file.is_file():
            return []
        try:
            saved = _flatten(yaml.safe_load(saved_file.read_text()))
        except (OSError, yaml.YAMLError) as e:
            return [f"{saved_file} unreadable ({type(e).__name__})"]
        cfg = build_config(str(self.config), list(self.opts), config_hooks_for(str(self.config)))
        for split, name in (("TRAIN", CUSTOM_TRAIN), ("TEST", CUSTOM_TEST)):
            if cfg.D2ALIGN.DATA[f"{split}_JSON"]:  # as register_data_from_config renames them
                cfg.DATASETS[split] = (name,)
        wanted = _flatten(yaml.safe_load(cfg.dump()))
        return [
            f"{key}: {saved[key]!r} -> {wanted[key]!r}"
            for key in sorted(wanted.keys() & saved.keys())
            if key not in _PLACE_KEYS and wanted[key] != saved[key]
        ]


# config keys that say where a run writes or reads, not how it trains
_PLACE_KEYS = {"OUTPUT_DIR", "MODEL.WEIGHTS", "MODEL.DEVICE"}


def _flatten(node, prefix: str = "") -> Dict[str, object]:
    """{"A.B.C": value} of a nested dict (a config's YAML)."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node} if prefix else {}
    flat = {}
    for key, value in node.items():
        flat.update(
            _flatten(value, f"{prefix}{key}.")
            if isinstance(value, dict)
            else {f"{prefix}{key}": value}
        )
    return flat


def _output_dir(config: Path, opts: Sequence[str], root: Path) -> Tuple[Path, int]:
    """OUTPUT_DIR (absolute; relative to `root` when relative) and SOLVER.MAX_ITER."""
    from d2align.engine import build_config
    from d2align.projects import config_hooks_for

    cfg = build_config(str(config), list(opts), config_hooks_for(str(config)))
    out = Path(cfg.OUTPUT_DIR)
    return (out if out.is_absolute() else root / out), int(cfg.SOLVER.MAX_ITER)


def runs_of(
    config: Path,
    opts: Sequence[str],
    seeds: Sequence[int],
    root: Path,
    label: Optional[str] = None,
    out_dir: Optional[Path] = None,
) -> List[Run]:
    """The runs of one config: one with its own SEED when `seeds` is empty, else one per seed
    in `<OUTPUT_DIR>/seed<s>` (with `SEED s OUTPUT_DIR <that folder>` appended to `opts`).

    Args:
        config: the config file.
        opts: its overrides.
        seeds: the seeds, or empty.
        root: the checkout (relative OUTPUT_DIRs are relative to it).
        label: the row's label (default: the config's stem).
        out_dir: OUTPUT_DIR to use instead of the config's (then appended to `opts`).
    """
    config = Path(config).resolve()
    label = label or config.stem
    config_out, max_iter = _output_dir(config, opts, root)
    base = Path(out_dir) if out_dir is not None else config_out
    if not seeds:
        extra = ("OUTPUT_DIR", str(base)) if out_dir is not None else ()
        return [Run(label, config, None, tuple(opts) + extra, base, max_iter)]
    runs = []
    for seed in seeds:
        seed_dir = base / f"seed{seed}"
        extra = ("SEED", str(seed), "OUTPUT_DIR", str(seed_dir))
        runs.append(Run(label, config, seed, tuple(opts) + extra, seed_dir, max_iter))
    return runs


def read_results(path: Path) -> Optional[dict]:
    """A run's `final_results.json` payload, or None when the file is missing, unreadable or
    not a results payload (empty or truncated, as a full disk leaves it: not finished)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(payload, dict) and isinstance(payload.get("results"), dict):
        return payload
    return None


def slug(label: str) -> str:
    """`label` as a file name: other characters than letters, digits, "-_." become "_"."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_") or "run"


def plan_runs(
    suite: Suite,
    root: Path,
    seeds: Sequence[int] = (),
    extra_opts: Sequence[str] = (),
    first_opts: Sequence[str] = (),
    runs_dir: Optional[Path] = None,
) -> Dict[str, List[Run]]:
    """The runs of every row of `suite`, by label.

    Overrides apply in this order: `first_opts` (e.g. the quick mode's), the suite's, the row's,
    `extra_opts` (the command line's), then SEED / OUTPUT_DIR / MODEL.WEIGHTS.

    Args:
        suite: the suite.
        root: the checkout.
        seeds: the seeds (empty: each config's own SEED).
        extra_opts: overrides of the command line.
        first_opts: overrides applied before the suite's.
        runs_dir: when given, every row runs in `<runs_dir>/<label>` instead of its config's
            OUTPUT_DIR (the quick mode keeps its runs apart from full ones).

    Raises:
        ValueError: two runs would write into one folder.
    """
    planned: Dict[str, List[Run]] = {}
    for entry in suite.runs:
        opts = tuple(first_opts) + suite.opts + entry.opts + tuple(extra_opts)
        out = runs_dir / slug(entry.label) if runs_dir is not None else None
        planned[entry.label] = runs_of(entry.config, opts, seeds, root, entry.label, out)
    for entry in suite.runs:
        if entry.weights_from:
            planned[entry.label] = _evaluating(planned[entry.label], planned[entry.weights_from])
    check_output_dirs([r for runs in planned.values() for r in runs], suite)
    return planned


def _evaluating(runs: List[Run], sources: List[Run]) -> List[Run]:
    """`runs` turned into evaluations of the final model of the same seed's source run."""
    out = []
    for run, source in zip(runs, sources):
        weights = ("MODEL.WEIGHTS", str(source.out_dir / "model_final.pth"))
        out.append(dataclasses.replace(run, opts=run.opts + weights, weights_from=source.name))
    return out


def check_output_dirs(runs: Sequence[Run], suite: Suite) -> None:
    """Refuse two runs of one suite writing into the same folder."""
    seen: Dict[Path, Run] = {}
    where = suite.source or "the command line"
    for run in runs:
        folder = run.out_dir.resolve()  # one folder spelled two ways (".../zz/../A") is one
        other = seen.get(folder)
        if other is not None:
            raise ValueError(
                f"{where}: runs {other.name!r} and {run.name!r} would both write into "
                f"{folder}; give one of them its own OUTPUT_DIR (opts: [OUTPUT_DIR, ...])"
            )
        seen[folder] = run
