"""Runs the processes of a suite: `jobs` at a time, surviving failures, leaving no orphans.

* A run whose `final_results.json` exists is reused (unless `retrain`); a run stopped half way
  (a `last_checkpoint` in its OUTPUT_DIR) continues with `--resume`.
* A run that fails is reported (`Outcome` with its exit code and the tail of its log) and the
  other runs go on; a run that evaluates a failed run's model is skipped. Every process runs
  with Python's faulthandler on (`CHILD_ENV`), so that a crash in native code (a C++ op,
  pycocotools) leaves each thread's Python stack in the run's log, and the reason of a run
  killed by a signal names the signal and the checkpoint the same command resumes from.
* Every training runs in its own process group (and, on Linux, gets SIGTERM if the suite
  dies); on Ctrl-C, SIGTERM, SIGHUP or an exception in the suite, every group is terminated
  (SIGTERM, then SIGKILL after a grace period) before the exception propagates.
* Each run's folder is locked while it trains, so that another suite needing the same run
  waits for it and then reuses its results instead of training it a second time.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..atomic import atomic_write_text
from ..lock import DirLock
from ..system import die_with_parent, job_slots, usable_cpu_set, visible_gpus
from .progress import format_seconds, overall_eta, read_progress
from .runs import STAMP_FILE, Run, read_results

__all__ = [
    "LocalScheduler",
    "Outcome",
    "Scheduler",
    "SuiteStopped",
    "execute",
    "exit_reason",
    "finished",
    "preflight",
    "read_log_tail",
    "starting",
    "write_stamp",
]

SUMMARY_FILE = "suite_summary.json"
RUN_LOCK = "suite_run.lock"
TAIL_LINES = 20


@dataclasses.dataclass
class Outcome:
    """What became of one run.

    Attributes:
        status: "reused" (results were there), "done", "failed" or "skipped".
        returncode: the process's exit status (None when it did not run).
        log_tail: the last lines of its log (failed runs).
        seconds: wall time of the process.
        resumed_from: the checkpoint it resumed from, if any.
        reason: why it failed or was skipped.
    """

    status: str
    returncode: Optional[int] = None
    log_tail: str = ""
    seconds: Optional[float] = None
    resumed_from: Optional[str] = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("reused", "done")


class SuiteStopped(Exception):
    """The suite received a termination signal (its trainings have been terminated)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# the environment every training or evaluation process gets on top of the suite's: on SIGSEGV,
# SIGFPE, SIGABRT, SIGBUS or SIGILL, Python writes the stack of each thread to stderr (the log)
CHILD_ENV = {"PYTHONFAULTHANDLER": "1"}
# signals that stop a process on purpose (a person, the suite, SLURM's cancel or requeue);
# any other signal that kills a run is a crash
STOP_SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP)


def exit_reason(run: Run, code: int) -> str:
    """Why a run's process that exited with status `code` (non-zero; negative: killed by
    signal -code, as `subprocess` reports it) failed, in words: the exit status or the
    signal, and the checkpoint that the same command would resume it from, if any."""
    if code >= 0:
        return f"exit {code}"
    try:
        reason = f"killed by {signal.Signals(-code).name}"
    except ValueError:
        reason = f"killed by signal {-code}"
    if -code not in STOP_SIGNALS:
        reason += " (a crash; the Python stack of each thread is in its log)"
    try:
        checkpoint = run.checkpoint_pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        checkpoint = ""
    if checkpoint and not run.eval_only:
        reason += f"; the same command resumes it from {checkpoint}"
    return reason


def finished(run: Run) -> bool:
    """Whether `run` has a complete results file (an empty or truncated one, as a full disk
    leaves, is not) and, for an evaluation, evaluated the model its source has now (a source
    retrained since then makes it unfinished: it is evaluated again)."""
    if read_results(run.results_file) is None:
        return False
    if run.weights_file is None:
        return True
    recorded = (run.recorded_stamp() or {}).get("weights_sha256")
    return recorded is not None and recorded == file_digest(run.weights_file)


@functools.lru_cache(maxsize=256)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def file_digest(path: Path) -> Optional[str]:
    """sha256 of a file (cached while its mtime and size stay), or None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _digest(str(path), st.st_mtime_ns, st.st_size)


def preflight(runs: Sequence[Run], root: Path, retrain: bool) -> None:
    """Refuse to start when a run's folder holds another run's files (unless `retrain`)."""
    problems = [p for p in (r.foreign_files(root) for r in runs) if p]
    if problems and not retrain:
        raise ValueError(
            "a run's OUTPUT_DIR holds another run; give it its own OUTPUT_DIR, or pass "
            "--retrain to overwrite:\n  " + "\n  ".join(problems)
        )


_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _child_setup(parent_pid: int, cores=None) -> None:  # pragma: no cover - in the child
    """Unblock the signals the suite blocks while it forks (a blocked mask survives exec), pin
    the child to `cores` (its slot's share, where the platform can), and on Linux have SIGTERM
    delivered to the child when the suite process dies."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _BLOCKED)
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    die_with_parent(parent_pid)


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGTERM / SIGHUP into `SuiteStopped` and SIGINT into KeyboardInterrupt. SIGINT is
    set explicitly: a process started in the background by a non-interactive shell inherits
    SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own."""

    def handler(signum, frame):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SuiteStopped(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def read_log_tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `log`, or "" when it cannot be read."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclasses.dataclass
class _Child:
    run: Run
    proc: subprocess.Popen
    log: object
    lock: DirLock
    start: float
    resumed_from: Optional[str]
    slot: int = 0


def _terminate(children: List[_Child], grace_s: float) -> None:
    """SIGTERM every child's process group, SIGKILL what is left after `grace_s`, reap."""
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=max(0.0, deadline - time.time()))
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)  # the group: also the loader workers
        child.proc.wait()
        child.log.close()
        child.lock.release()


class Scheduler:
    """The state of one `execute` call, whatever starts the processes: which runs are reused,
    pending, waiting or finished, and the preparation every launch shares (the resume
    decision, stale files, the run's stamp). Subclasses start, watch and stop the processes:
    `LocalScheduler` here, `d2align.suite.slurm.SlurmScheduler` on a SLURM cluster."""

    def __init__(self, runs, root, python, retrain, echo):
        self.root, self.python, self.retrain, self.echo = root, python, retrain, echo
        self.outcomes: Dict[str, Outcome] = {}
        self.pending: List[Run] = []
        self.waiting: Dict[str, str] = {}  # run name -> why it waits (this pass)
        self.start = time.time()
        for run in runs:
            if finished(run) and not retrain:
                self.outcomes[run.name] = Outcome("reused")
            else:
                self.pending.append(run)

    # --- what a subclass provides
    def has_room(self) -> bool:
        """Whether another run may start now."""
        raise NotImplementedError

    def source_in_flight(self, name: str) -> bool:
        """Whether the run `name` has been started and not finished (an evaluation of its
        model may then be handed over ahead of time, as a SLURM dependency does)."""
        return False

    def start_run(self, run: Run, lock: DirLock, resume: bool, resumed_from) -> None:
        raise NotImplementedError

    def reap(self) -> None:
        raise NotImplementedError

    @property
    def busy(self) -> bool:
        """Whether runs are in flight."""
        raise NotImplementedError

    def stop_all(self, grace_s: float) -> None:
        """Stop every run in flight (Ctrl-C, SIGTERM or an error in the suite)."""
        raise NotImplementedError

    def status_line(self) -> str:
        raise NotImplementedError

    # --- shared
    def _ready(self, run: Run) -> bool:
        """Whether `run` may start now (records why not in `waiting`, or skips it)."""
        if run.weights_from is None:
            return True
        source = self.outcomes.get(run.weights_from)
        if source is None:
            if self.source_in_flight(run.weights_from):
                return True
            self.waiting[run.name] = f"waiting for {run.weights_from}"
            return False
        if not source.ok:
            self.outcomes[run.name] = Outcome(
                "skipped",
                reason=f"evaluates the model of {run.weights_from}, which {source.status}",
            )
            self.echo(f"[suite] {run.name}: skipped ({self.outcomes[run.name].reason})")
        return True

    def launch_ready(self) -> None:
        # every wait is found again on each pass, so one that ended is not shown; a run waits
        # for another process's folder only while a slot is free to start it
        self.waiting.clear()
        for run in list(self.pending):
            if not self._ready(run):
                continue
            if run.name in self.outcomes:  # skipped
                self.pending.remove(run)
                continue
            if not self.has_room():
                continue
            self.pending.remove(run)
            lock = DirLock(run.out_dir, RUN_LOCK, "suite run")
            holder = lock.try_acquire()
            if holder is not None:
                self.waiting[run.name] = f"waiting for PID {holder.get('pid', '?')} (its folder)"
                self.pending.append(run)
                continue
            if finished(run) and not self.retrain:  # another suite trained it meanwhile
                lock.release()
                self.outcomes[run.name] = Outcome("reused")
                continue
            self._launch(run, lock)

    def _launch(self, run: Run, lock: DirLock) -> None:
        checkpoint = run.checkpoint_pointer
        resume = not self.retrain and not run.eval_only and checkpoint.is_file()
        try:
            resumed_from = checkpoint.read_text().strip() if resume else None
        except (OSError, UnicodeDecodeError) as e:  # one run's damaged folder, not the suite's
            lock.release()
            reason = f"unreadable {checkpoint} ({type(e).__name__}); delete it to start anew"
            self.outcomes[run.name] = Outcome("failed", reason=reason)
            self.echo(f"[suite] {run.name}: FAILED ({reason})")
            return
        stale = [run.results_file, run.out_dir / SUMMARY_FILE]
        for path in stale + ([checkpoint] if self.retrain else []):
            path.unlink(missing_ok=True)
        write_stamp(run, self.root)
        self.start_run(run, lock, resume, resumed_from)

    def record_exit(
        self, run: Run, code, seconds, resumed_from, why_failed: str = "", extra_tail: str = ""
    ) -> None:
        """Record how a started run ended: "done" when it exited 0 with its results, else
        "failed" with `why_failed` (or its exit code) and the tail of its log (and
        `extra_tail`: other logs, e.g. a SLURM job's stderr)."""
        if code == 0 and finished(run):
            self.outcomes[run.name] = Outcome(
                "done", code, seconds=seconds, resumed_from=resumed_from
            )
            self.echo(f"[suite] {run.name}: done in {seconds:.0f} s")
            return
        no_results = f"exit 0 but no {run.results_file.name}"
        reason = why_failed or (exit_reason(run, code) if code else no_results)
        tail = "\n".join(t for t in (read_log_tail(run.log_file), extra_tail) if t)
        self.outcomes[run.name] = Outcome("failed", code, tail, seconds, resumed_from, reason)
        shown = "\n".join("    " + line for line in tail.splitlines()[-8:])
        self.echo(f"[suite] {run.name}: FAILED ({reason}); log {run.log_file}:\n{shown}")

    def overall(
        self, remaining: List[Optional[float]], s_per_iter: Dict[str, float], slots: int
    ) -> str:
        """The overall ETA part of a progress line: `remaining` seconds of the runs in flight,
        the pending ones estimated at the mean measured s/iter."""
        rate = statistics.fmean(s_per_iter.values()) if s_per_iter else None
        estimates = [
            None if rate is None or r.eval_only else rate * r.max_iter for r in self.pending
        ]
        eta = overall_eta(remaining, estimates, slots)
        bound = "" if None not in remaining + estimates else ">= "
        shown = "?" if not eta and bound else bound + format_seconds(eta)  # "?": none measured
        todo = f"{len(self.pending)} pending, " if self.pending else ""
        return f"overall ETA {shown} ({todo}{len(remaining)} running)"


def starting(run: Run, resumed_from: Optional[str]) -> str:
    """What a run's process starts doing, for the progress messages."""
    if resumed_from is not None:
        return f"resuming from {resumed_from}"
    return "evaluating" if run.eval_only else "training"


def write_stamp(run: Run, root: Path) -> None:
    """Record in the run's folder what it runs (`Run.stamp`) and, for an evaluation, which
    model it evaluates (see `finished`); a SLURM job writes it again when the model exists."""
    stamp = run.stamp(root)
    if run.weights_file is not None:
        stamp["weights_sha256"] = file_digest(run.weights_file)
    atomic_write_text(run.out_dir / STAMP_FILE, json.dumps(stamp, indent=2))


class LocalScheduler(Scheduler):
    """Runs the processes on this machine, `jobs` at a time, each pinned to its share of the
    cores and GPUs."""

    def __init__(self, runs, jobs, root, python, retrain, echo):
        super().__init__(runs, root, python, retrain, echo)
        self.jobs = jobs
        # each concurrent run its share of the cores and of the GPUs (CUDA_VISIBLE_DEVICES)
        self.slots = job_slots(jobs, usable_cpu_set(), visible_gpus())
        self.running: List[_Child] = []
        self.s_per_iter: Dict[str, float] = {}

    def has_room(self) -> bool:
        return len(self.running) < self.jobs

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def start_run(self, run: Run, lock: DirLock, resume: bool, resumed_from) -> None:
        cmd = run.command(self.python, self.root, resume=resume)
        log = open(run.log_file, "a" if resume else "w")
        slot = min(set(range(self.jobs)) - {c.slot for c in self.running})
        env_vars, cores = self.slots[slot]
        log.write(" ".join(cmd) + "\n")
        log.flush()
        # no signal between the fork and the bookkeeping: the child is always terminated
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                env=dict(os.environ, **CHILD_ENV, **env_vars),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=functools.partial(_child_setup, os.getpid(), cores),
            )
            self.running.append(_Child(run, proc, log, lock, time.time(), resumed_from, slot))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self.echo(
            f"[suite] {run.name}: {starting(run, resumed_from)} (pid {proc.pid}) -> {run.out_dir} "
            f"(log: {run.log_file})"
        )

    def reap(self) -> None:
        for child in list(self.running):
            if child.proc.poll() is None:
                continue
            self.running.remove(child)
            child.log.close()
            child.lock.release()
            seconds = time.time() - child.start
            self.record_exit(child.run, child.proc.returncode, seconds, child.resumed_from)

    def stop_all(self, grace_s: float) -> None:
        self.echo(f"[suite] terminating {len(self.running)} training(s)")
        _terminate(self.running, grace_s)
        self.running = []

    def status_line(self) -> str:
        parts, remaining = [], []
        for child in self.running:
            progress = read_progress(child.run.log_file)
            parts.append(f"{child.run.name}: {progress.describe(child.run.max_iter)}")
            left = progress.eta_s
            if progress.phase == "training" and progress.iteration is not None and left:
                self.s_per_iter[child.run.name] = left / max(
                    1, child.run.max_iter - progress.iteration - 1
                )
            remaining.append(left)
        parts += [f"{name}: {why}" for name, why in self.waiting.items()]
        parts.append(self.overall(remaining, self.s_per_iter, self.jobs))
        return f"[suite {format_seconds(time.time() - self.start)}] " + " | ".join(parts)


def execute(
    runs: Sequence[Run],
    jobs: int,
    root: Path,
    python: str = sys.executable,
    retrain: bool = False,
    poll_s: float = 30.0,
    echo: Callable[[str], None] = print,
    grace_s: float = 10.0,
    scheduler: Optional[Callable[..., Scheduler]] = None,
    detach: bool = False,
) -> Dict[str, Outcome]:
    """Run what `runs` still need: on this machine `jobs` at a time, each pinned to its share
    of the cores ((CPU cores // jobs) threads) and of the GPUs (`d2align.system.job_slots`),
    or through another `scheduler` (`d2align.suite.slurm.SlurmScheduler`).

    Args:
        runs: the runs, in the order they start (an evaluation waits for the run whose model
            it evaluates).
        jobs: processes at once (local).
        root: the checkout (the processes' working directory).
        python: the interpreter of the trainings.
        retrain: train finished runs again, from scratch.
        poll_s: seconds between progress lines (one line per poll: every running run's
            iteration and ETA, and the overall ETA).
        echo: where the progress goes.
        grace_s: seconds the trainings get to exit after SIGTERM before SIGKILL.
        scheduler: `f(runs, root, python, retrain, echo) -> Scheduler`; None: `LocalScheduler`.
        detach: start what is needed and return without waiting (runs still in flight have
            no outcome); only for schedulers whose runs outlive this process (SLURM).

    Returns:
        {run name: Outcome} for every run that finished, was reused, failed or was skipped.

    Raises:
        KeyboardInterrupt, SuiteStopped, or any exception of the loop: after every run in
        flight has been stopped.
    """
    preflight(runs, root, retrain)
    if scheduler is None:
        state: Scheduler = LocalScheduler(list(runs), max(1, jobs), root, python, retrain, echo)
    else:
        state = scheduler(list(runs), root, python, retrain, echo)
    last_line = time.time()
    done = False
    try:
        with _stop_on_signals():
            while state.pending or state.busy:
                state.launch_ready()
                if detach and not state.pending:
                    break
                time.sleep(min(0.25, poll_s))
                state.reap()
                if time.time() - last_line >= poll_s and (state.busy or state.pending):
                    echo(state.status_line())
                    last_line = time.time()
        done = True
    finally:
        if state.busy and not (detach and done):
            # a second Ctrl-C / SIGTERM waits until every run in flight is stopped
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
            try:
                state.stop_all(grace_s)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return state.outcomes
