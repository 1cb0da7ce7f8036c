"""Suites: several configs trained, evaluated and compared side by side in one command.

`tools/compare.py` is the command line (`d2align.suite.cli`). The pieces:

* `spec`: suite files `configs/suites/<name>.yaml` (runs, labels, baselines, seeds, jobs);
* `runs`: one `Run` per row and seed (command line, OUTPUT_DIR, what it was started with);
* `runner`: the processes (jobs at a time, failures reported, resume, no orphans);
* `d2align.lock`: the lock of an output folder naming its holder (shared with the trainings);
* `progress`: iteration and ETA of each run and of the suite;
* `summary`: parameter count and misalignment diagnostics of a finished run;
* `report`: rows over seeds, differences to baselines, table, JSON and figures;
* `quick`: the quick mode (small data, few iterations).
"""

from ..lock import DirLock, LockHeld
from .cli import main
from .progress import last_progress, overall_eta, read_progress
from .report import aggregate, markdown_table, paired_differences, summarize
from .runner import Outcome, SuiteStopped, execute
from .runs import Run, plan_runs, runs_of
from .spec import RunEntry, Suite, load_suite, parse_suite, suite_of_configs
from .summary import read_payload, run_summary

__all__ = [
    "DirLock",
    "LockHeld",
    "Outcome",
    "Run",
    "RunEntry",
    "Suite",
    "SuiteStopped",
    "aggregate",
    "execute",
    "last_progress",
    "load_suite",
    "main",
    "markdown_table",
    "overall_eta",
    "paired_differences",
    "parse_suite",
    "plan_runs",
    "read_payload",
    "read_progress",
    "run_summary",
    "runs_of",
    "suite_of_configs",
    "summarize",
]
