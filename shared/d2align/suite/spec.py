"""Suite files: `configs/suites/<name>.yaml`, a named list of runs compared in one table.

A suite file holds::

    name: headline                 # required; the default output folder is output/suites/<name>
    description: ...               # optional, printed above the table
    jobs: 4                        # optional (default 1): runs trained at once
    seeds: [42, 1, 7]              # optional: train every run once per seed (mean ± std)
    opts: [KEY, VALUE, ...]        # optional: overrides applied to every run
    runs:
      - config: configs/shapes/faster_rcnn_R18_FPN_scratch.yaml   # relative to the checkout
        label: Faster R-CNN        # optional (default: the config file's stem); unique
      - config: projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml
        label: IoU-Net
        baseline: Faster R-CNN     # optional: the row this method modifies (differences), or
                                   # a list of rows ([A, B]): one Δ row per baseline, in order
                                   # (quote a label holding a comma inside [...])
        opts: [KEY, VALUE, ...]    # optional: this run's own overrides
        weights_from: IoU-Net      # optional: evaluate (--eval-only) that run's final model
    seed_spread:                   # optional: measured AP of one config over seeds, cited
      - {label: RetinaNet, seeds: [42, 1], AP: [19.1, 12.5], source: README.md}
    launcher:                      # optional: what each run's job asks of SLURM with
      partition: learnfair         # `--launcher slurm` (keys: `d2align.suite.slurm_options`;
      gpus_per_run: 8              # the `--slurm-*` options override them)
      cpus_per_run: 80
      time_min: 2880

Every mistake is refused with a `ValueError` that names the file and the entry, e.g.
``configs/suites/x.yaml: runs[2] (label 'IoU-Net'): unknown key 'opt' (allowed: ...)``.
"""

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from .slurm_options import SlurmOptions, options_from_mapping

__all__ = ["RunEntry", "SeedSpread", "Suite", "load_suite", "suite_file", "suite_of_configs"]

SUITE_KEYS = ("name", "description", "jobs", "seeds", "opts", "runs", "seed_spread", "launcher")
RUN_KEYS = ("config", "label", "baseline", "opts", "weights_from")
SPREAD_KEYS = ("label", "seeds", "AP", "source")


@dataclasses.dataclass(frozen=True)
class RunEntry:
    """One row of a suite.

    Attributes:
        config: the config file (absolute path).
        label: the row's name in the table (unique in the suite).
        opts: `KEY VALUE` overrides of this row, after the suite's own.
        baselines: labels of the rows it is compared with, in order (one Δ row each): first
            the row this method modifies; empty for none.
        weights_from: label of the row whose final model this row evaluates (`--eval-only`),
            or None when the row trains.
    """

    config: Path
    label: str
    opts: Tuple[str, ...] = ()
    baselines: Tuple[str, ...] = ()
    weights_from: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SeedSpread:
    """AP of one config measured over several seeds (cited in the one-seed noise note)."""

    label: str
    seeds: Tuple[int, ...]
    ap: Tuple[float, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class Suite:
    """A parsed suite: what `tools/compare.py` trains, evaluates and tabulates."""

    name: str
    runs: Tuple[RunEntry, ...]
    jobs: int = 1
    seeds: Tuple[int, ...] = ()
    opts: Tuple[str, ...] = ()
    description: str = ""
    seed_spread: Tuple[SeedSpread, ...] = ()
    source: Optional[Path] = None
    launcher: Optional["SlurmOptions"] = None

    def entry(self, label: str) -> RunEntry:
        return next(e for e in self.runs if e.label == label)


def suite_file(name_or_path: Union[str, Path], root: Path) -> Path:
    """The file of a suite given by name (`configs/suites/<name>.yaml` under `root`) or path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path if path.is_absolute() else (Path.cwd() / path)
    found = root / "configs" / "suites" / f"{name_or_path}.yaml"
    if not found.is_file():
        known = sorted(p.stem for p in (root / "configs" / "suites").glob("*.yaml"))
        raise ValueError(
            f"no suite named {name_or_path!r}: {found} does not exist (known: {known})"
        )
    return found


def _fail(where: str, problem: str):
    raise ValueError(f"{where}: {problem}")


def _check_keys(record: Any, allowed: Tuple[str, ...], where: str) -> None:
    if not isinstance(record, dict):
        _fail(where, f"expected a mapping with keys {list(allowed)}, got {record!r}")
    unknown = [k for k in record if k not in allowed]
    if unknown:
        _fail(where, f"unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")


def _opts(value: Any, where: str) -> Tuple[str, ...]:
    """`KEY VALUE` pairs as strings (YAML numbers and booleans become their text)."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) % 2:
        _fail(where, f"opts must be a list of KEY, VALUE pairs, got {value!r}")
    for item in value:
        if isinstance(item, (dict, list)) or item is None:
            _fail(where, f"opts: {item!r} is not a key or a scalar value")
    return tuple(str(v) for v in value)


def _seeds(value: Any, where: str) -> Tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, int) for s in value):
        _fail(where, f"seeds must be a list of integers, got {value!r}")
    if len(set(value)) != len(value):
        _fail(where, f"seeds must not repeat a seed, got {value}")
    if not all(0 <= s < 2**31 for s in value):  # detectron2 draws a random seed for SEED < 0
        _fail(where, f"seeds must be in [0, 2**31), got {value}")
    return tuple(value)


def _entry(record: Any, index: int, root: Path, where_file: str) -> RunEntry:
    label = record.get("label") if isinstance(record, dict) else None
    where = f"{where_file}: runs[{index}]" + (f" (label {label!r})" if label else "")
    _check_keys(record, RUN_KEYS, where)
    if "config" not in record or not isinstance(record["config"], str):
        _fail(where, "needs 'config': a config file, relative to the checkout")
    config = Path(record["config"])
    config = config if config.is_absolute() else root / config
    if not config.is_file():
        _fail(where, f"config file {record['config']!r} not found ({config})")
    if label is None:
        label = config.stem
    if not isinstance(label, str) or not label.strip():
        _fail(where, f"label must be a non-empty string, got {label!r}")
    bad = [c for c in ("|", "\n", "/", "..") if c in label]
    if bad:  # "|" breaks the markdown table; "/" and ".." would name folders outside the suite's
        _fail(where, f"label must not contain {bad}, got {label!r}")
    weights_from = record.get("weights_from")
    if weights_from is not None and not isinstance(weights_from, str):
        _fail(where, f"weights_from must be the label of another run, got {weights_from!r}")
    return RunEntry(
        config=config.resolve(),
        label=label,
        opts=_opts(record.get("opts"), where),
        baselines=_baselines(record.get("baseline"), where),
        weights_from=weights_from,
    )


def _baselines(value: Any, where: str) -> Tuple[str, ...]:
    """`baseline:` as a tuple of labels: one label, or a non-empty list of distinct labels."""
    if value is None:
        return ()
    labels = [value] if isinstance(value, str) else value
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels):
        _fail(where, f"baseline must be the label of another run or a list of them, got {value!r}")
    if len(set(labels)) != len(labels):
        _fail(where, f"baseline must not name a run twice, got {labels}")
    return tuple(labels)


def _check_references(entries: List[RunEntry], where_file: str) -> None:
    labels = {e.label: i for i, e in enumerate(entries)}
    for i, e in enumerate(entries):
        where = f"{where_file}: runs[{i}] (label {e.label!r})"
        references = [("baseline", b) for b in e.baselines]
        for key, target in references + [("weights_from", e.weights_from)]:
            if target is None:
                continue
            if target not in labels:
                _fail(where, f"{key} {target!r} is not the label of a run ({sorted(labels)})")
            if target == e.label:
                _fail(where, f"{key} names the run itself")
        source = entries[labels[e.weights_from]] if e.weights_from else None
        if source is not None and source.weights_from is not None:
            _fail(where, f"weights_from {e.weights_from!r} names a run that trains nothing")


def _spread(record: Any, index: int, where_file: str) -> SeedSpread:
    where = f"{where_file}: seed_spread[{index}]"
    _check_keys(record, SPREAD_KEYS, where)
    missing = [k for k in SPREAD_KEYS if k not in record]
    if missing:
        _fail(where, f"missing key(s) {missing}")
    seeds, ap = _seeds(record["seeds"], where), record["AP"]
    if not isinstance(ap, list) or not all(isinstance(v, (int, float)) for v in ap):
        _fail(where, f"AP must be a list of numbers, got {ap!r}")
    if len(ap) != len(seeds) or len(ap) < 2:
        _fail(where, f"needs one AP per seed and at least two seeds, got {seeds} and {ap}")
    return SeedSpread(
        str(record["label"]), seeds, tuple(float(v) for v in ap), str(record["source"])
    )


def parse_suite(data: Any, root: Path, where_file: str, source: Optional[Path] = None) -> Suite:
    """A `Suite` from the parsed YAML `data`; errors name `where_file` and the entry."""
    _check_keys(data, SUITE_KEYS, where_file)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        _fail(where_file, f"needs 'name': a non-empty string, got {name!r}")
    if any(c in name for c in ("/", "\\", "..")) or name.startswith("."):
        _fail(where_file, f"name names the output folder output/suites/<name>: no '/', '\\' or "
              f"'..', got {name!r}")  # fmt: skip
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        _fail(where_file, "needs 'runs': a non-empty list of runs")
    entries = []
    for i, record in enumerate(runs):
        entry = _entry(record, i, root, where_file)
        for j, other in enumerate(entries):
            if other.label == entry.label:
                _fail(
                    f"{where_file}: runs[{i}] (label {entry.label!r})",
                    f"duplicated label: runs[{j}] has it too; give each run its own 'label'",
                )
        entries.append(entry)
    _check_references(entries, where_file)
    jobs = data.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        _fail(where_file, f"jobs must be an integer >= 1, got {jobs!r}")
    launcher = data.get("launcher")
    if launcher is not None:
        if not isinstance(launcher, dict):
            _fail(where_file, f"launcher must be a mapping of SLURM settings, got {launcher!r}")
        try:
            launcher = options_from_mapping(launcher, where_file)
        except ValueError as e:
            raise ValueError(str(e)) from None
    spreads = data.get("seed_spread") or []
    if not isinstance(spreads, list):
        _fail(where_file, f"seed_spread must be a list, got {spreads!r}")
    return Suite(
        name=name,
        runs=tuple(entries),
        jobs=jobs,
        seeds=_seeds(data.get("seeds"), where_file),
        opts=_opts(data.get("opts"), where_file),
        description=str(data.get("description") or "").strip(),
        seed_spread=tuple(_spread(r, i, where_file) for i, r in enumerate(spreads)),
        source=source,
        launcher=launcher,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicated key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_suite(name_or_path: Union[str, Path], root: Path) -> Suite:
    """Read and check a suite file (see the module docstring).

    Args:
        name_or_path: a suite name (`configs/suites/<name>.yaml`) or a YAML file.
        root: the checkout; config paths in the file are relative to it.

    Raises:
        ValueError: naming the file and the entry.
    """
    path = suite_file(name_or_path, root)
    try:
        where = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        where = str(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{where}: cannot read the suite file: {e}") from e
    return parse_suite(data, root, where, source=path)


def suite_of_configs(configs: List[Path], root: Path, name: str = "comparison") -> Suite:
    """The suite of a plain list of configs: one row per config, labelled by its stem; every row
    after the first has the first as its baseline (differences to the first config)."""
    data: Dict[str, Any] = {"name": name, "runs": []}
    for i, config in enumerate(configs):
        data["runs"].append({"config": str(Path(config).resolve()), "label": Path(config).stem})
        if i:
            data["runs"][-1]["baseline"] = Path(configs[0]).stem
    return parse_suite(data, root, "the command line")
