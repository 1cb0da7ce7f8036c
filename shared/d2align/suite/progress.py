"""Progress of the runs of a suite, read from their logs: iteration, ETA, overall ETA.

detectron2's `CommonMetricPrinter` writes lines such as
``eta: 0:02:01  iter: 879  total_loss: 0.9 ...`` and `inference_on_dataset` writes
``Inference done 120/300. ... ETA=0:00:30``; a run's state is read from the last of them.
"""

import dataclasses
import re
from pathlib import Path
from typing import List, Optional, Sequence

__all__ = ["Progress", "format_seconds", "last_progress", "overall_eta", "read_progress"]

_ITER = re.compile(r"(?:eta: (.+?)\s+)?iter: (\d+)")
_INFERENCE = re.compile(r"Inference done (\d+)/(\d+)\..*ETA=(\S+)")


def _seconds(text: str) -> Optional[float]:
    """'1 day, 0:02:01' / '0:02:01' -> seconds."""
    days = 0
    if "day" in text:
        head, text = text.split(",", 1)
        days = int(head.split()[0])
    try:
        h, m, s = (float(x) for x in text.strip().split(":"))
    except ValueError:
        return None
    return days * 86400 + h * 3600 + m * 60 + s


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclasses.dataclass
class Progress:
    """State of one run. `phase`: "starting", "training" or "evaluating"."""

    phase: str = "starting"
    iteration: Optional[int] = None
    eta: str = "?"
    eta_s: Optional[float] = None
    evaluated: Optional[int] = None
    to_evaluate: Optional[int] = None

    def describe(self, max_iter: int = 0) -> str:
        if self.phase == "training":
            total = f"/{max_iter}" if max_iter else ""
            return f"iter {self.iteration}{total} eta {self.eta}"
        if self.phase == "evaluating" and self.to_evaluate:
            return f"evaluating {self.evaluated}/{self.to_evaluate} eta {self.eta}"
        return self.phase


def read_progress(log: Path) -> Progress:
    """The state of a run from its log (a missing log: "starting")."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return Progress()
    progress = Progress()
    for line in text.splitlines():
        if " iter: " in line:
            match = _ITER.search(line)
            if match is None:
                continue
            eta, iteration = match.groups()
            progress = Progress("training", int(iteration))
            if eta:
                progress.eta, progress.eta_s = eta, _seconds(eta)
        elif "Start inference" in line:
            progress = Progress("evaluating", progress.iteration)
        elif "Inference done" in line:
            match = _INFERENCE.search(line)
            if match:
                done, total, eta = match.groups()
                progress = Progress("evaluating", progress.iteration, eta, _seconds(eta))
                progress.evaluated, progress.to_evaluate = int(done), int(total)
    return progress


def last_progress(log: Path) -> str:
    """Iteration and ETA of the last metrics line of `log`, e.g. "iter 339 eta 0:05:10"."""
    return read_progress(log).describe()


def overall_eta(
    remaining: Sequence[Optional[float]], pending: Sequence[Optional[float]], jobs: int
) -> Optional[float]:
    """Seconds until every run is done, `jobs` at a time: the running runs' remaining times,
    then each pending run (in order) on the first free slot. None when nothing is known; an
    unknown time counts as 0 (the caller says the ETA is a lower bound)."""
    if all(t is None for t in list(remaining) + list(pending)):
        return None
    slots: List[float] = sorted(t or 0.0 for t in remaining)
    slots += [0.0] * max(0, jobs - len(slots))
    for t in pending:
        slots.sort()
        slots[0] += t or 0.0
    return max(slots) if slots else 0.0
