"""The runs of a suite as SLURM jobs, submitted through submitit (`--launcher slurm`).

Every run is one job running the command the local launcher runs (the run's `train_net.py`),
with the same semantics:

* results in the run's OUTPUT_DIR (on the shared filesystem) are reused; a run with a
  checkpoint resumes with `--resume`: the job decides when it starts, so a job that SLURM
  requeues (preemption, `scontrol requeue`, or submitit's own requeue shortly before the time
  limit, `TrainingJob.checkpoint`) continues from its last checkpoint;
* a job that ends without results is a FAILED row with its SLURM state, exit code, how its
  training ended (`TrainingFailed`: the exit status, or the signal and the checkpoint to resume
  from) and the tail of its logs; the other jobs go on; an evaluation of a run's model is
  submitted with `--dependency=afterok:<that run's job>` (SLURM cancels it if that run fails:
  "skipped");
* Ctrl-C or SIGTERM of the suite cancels every job it submitted or follows (`scancel`), and
  waits until SLURM lists none of them as active; `--detach` submits and returns: each run's
  folder records its job (`slurm_job.json`), and the same command later follows the jobs still
  in SLURM instead of submitting them again, and collects the table;
* `gpus_per_run` is detectron2's `--num-gpus` inside the job; `nodes_per_run` (x
  `tasks_per_node`) machines get `--num-machines`, `--machine-rank` and `--dist-url` from the
  job's environment (submitit's `JobEnvironment`). Without CUDA, each machine trains in CPU
  processes that talk through gloo (`d2align.engine.distributed`).

The states come from `squeue -t all` (then `scontrol` for a failed job's exit code, and `sacct`
for jobs squeue has forgotten), so that a cluster without an accounting database works as
long as its `MinJobAge` keeps finished jobs listed for longer than the poll interval.
"""

import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from submitit.helpers import Checkpointable

from ..atomic import atomic_write_text
from ..lock import DirLock
from ..system import die_with_parent
from .progress import format_seconds, read_progress
from .runner import (
    CHILD_ENV,
    STOP_SIGNALS,
    Outcome,
    Scheduler,
    exit_reason,
    read_log_tail,
    starting,
    write_stamp,
)
from .runs import Run
from .slurm_options import SlurmOptions

__all__ = [
    "JOB_FILE",
    "JobState",
    "SlurmScheduler",
    "TrainingFailed",
    "TrainingJob",
    "slurm_states",
]

JOB_FILE = "slurm_job.json"  # in the run's OUTPUT_DIR: the job that trains it
TERMINAL = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "TIMEOUT",
}
QUERY_EVERY_S = 3.0  # seconds between two state queries
KILLED_WAIT_S = 120.0  # how long a job whose training was killed waits for SLURM's SIGKILL


# --------------------------------------------------------------------------- inside the job


def _child_setup(parent_pid: int) -> None:  # pragma: no cover - in the child
    """The training ignores submitit's preemption signal (its default action would kill it
    before submitit requeues the job) and gets SIGTERM if the job's process dies."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    die_with_parent(parent_pid)


def _address(host: str) -> str:
    """The address of the job's first node (its name where it does not resolve here)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _dist_port(job_id: str) -> int:
    """A port every task of a job derives alike from the job id (29500 + id mod 20000)."""
    digits = "".join(c for c in str(job_id) if c.isdigit()) or "0"
    return 29500 + int(digits) % 20000


class TrainingFailed(RuntimeError):
    """A job's training or evaluation ended without success; the message says how (the exit
    status, or the signal and the checkpoint the same command resumes from) and where its log
    is. The submitting side reads it back from the job's stderr (`FAILURE_LINE`)."""


# how the message of a job's TrainingFailed appears in its stderr (submitit's traceback)
FAILURE_LINE = re.compile(r"TrainingFailed: (.+)$", re.MULTILINE)


class TrainingJob(Checkpointable):
    """One run as a submitit job: runs `train_net.py` (resuming from the run's last checkpoint
    if it has one) with the machine's launch arguments, its output appended to the run's log.

    Being `Checkpointable`, the job is requeued by submitit when SLURM signals a preemption or
    the time limit, and started again it resumes from the checkpoint the training left.

    Args:
        run: the run.
        python: the interpreter of the training (the suite's, on the shared filesystem).
        root: the checkout.
        gpus_per_machine: detectron2's `--num-gpus` (0: one CPU process).
    """

    def __init__(self, run: Run, python: str, root: Path, gpus_per_machine: int):
        self.run, self.python, self.root = run, python, Path(root)
        self.gpus_per_machine = gpus_per_machine

    def launch_args(self, machine_rank: int, machines: int, master: str, job_id: str) -> List[str]:
        """detectron2's launch arguments of one machine of the job."""
        args = ["--num-gpus", str(max(1, self.gpus_per_machine))]
        if machines > 1:
            args += [
                "--num-machines",
                str(machines),
                "--machine-rank",
                str(machine_rank),
                "--dist-url",
                f"tcp://{master}:{_dist_port(job_id)}",
            ]
        return args

    def __call__(self) -> Dict[str, Any]:
        import submitit

        env = submitit.JobEnvironment()
        run, rank, machines = self.run, env.global_rank, env.num_tasks
        if run.weights_file is not None and rank == 0:
            write_stamp(run, self.root)  # the model it evaluates exists now
        resume = not run.eval_only and run.checkpoint_pointer.is_file()
        launch = self.launch_args(rank, machines, _address(env.hostnames[0]), env.job_id)
        cmd = run.command(self.python, self.root, resume=resume, launch_args=launch)
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1")) // max(1, self.gpus_per_machine)
        child_env = dict(os.environ, **CHILD_ENV, OMP_NUM_THREADS=str(max(1, threads)))
        child_env["MKL_NUM_THREADS"] = child_env["OMP_NUM_THREADS"]
        log_path = run.log_file if rank == 0 else run.out_dir / f"train_log.machine{rank}.txt"
        with open(log_path, "a") as log:
            log.write(
                f"[slurm] job {env.job_id}, machine {rank} of {machines} on {env.hostname}: "
                + " ".join(cmd)
                + "\n"
            )
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _child_setup(os.getppid()),
            )
            code = proc.wait()
        if code == 0:
            return {"returncode": 0, "resumed": resume, "machine": rank}
        if -code in STOP_SIGNALS or code in (128 + signal.SIGTERM, 128 + signal.SIGKILL):
            # SLURM stopped the training (cancel, requeue, preemption): SIGKILL follows after
            # KillWait; returning now would record a failure for a job that is requeued
            time.sleep(KILLED_WAIT_S)
        how = exit_reason(run, code) if code < 0 else f"exited with {code}"
        raise TrainingFailed(f"{Path(cmd[1]).name} {how}; log: {log_path}")


# ------------------------------------------------------------------- on the submitting side


@dataclasses.dataclass
class JobState:
    """What SLURM says of one job: `state` (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED,
    TIMEOUT ...), `reason` (why pending, or why it ended) and `exit_code` ("3:0")."""

    state: str
    reason: str = ""
    exit_code: str = ""
    name: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def _slurm(cmd: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def slurm_states(job_ids: Sequence[str]) -> Dict[str, JobState]:
    """The state of each job SLURM still knows (`squeue -t all`, else `sacct`); a failed
    job's exit code from `scontrol`. Jobs neither knows are left out."""
    ids = [str(i) for i in job_ids]
    states: Dict[str, JobState] = {}
    if not ids:
        return states
    done = _slurm(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r|%j"])
    for line in done.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 4 and fields[0] in ids:
            states[fields[0]] = JobState(
                fields[1], fields[2] if fields[2] != "None" else "", "", fields[3]
            )
    missing = [i for i in ids if i not in states]
    if missing:
        done = _slurm(
            [
                "sacct",
                "-X",
                "-n",
                "-P",
                "-o",
                "JobIDRaw,State,ExitCode,JobName",
                "-j",
                ",".join(missing),
            ]
        )
        if done.returncode == 0:
            for line in done.stdout.splitlines():
                fields = line.strip().split("|")
                if len(fields) == 4 and fields[0] in missing:
                    state = fields[1].split()[0] if fields[1] else "UNKNOWN"
                    states[fields[0]] = JobState(state, "", fields[2], fields[3])
    for job_id, st in states.items():
        if st.terminal and st.state != "COMPLETED" and not st.exit_code:
            shown = _slurm(["scontrol", "show", "job", "-o", job_id]).stdout
            for field in shown.split():
                if field.startswith("ExitCode="):
                    st.exit_code = field.split("=", 1)[1]
    return states


@dataclasses.dataclass
class _Job:
    run: Run
    job_id: str
    lock: DirLock
    start: float
    resumed_from: Optional[str]
    state: JobState = dataclasses.field(default_factory=lambda: JobState("SUBMITTED"))


def _job_name(run: Run) -> str:
    """A name that identifies the run's job (job ids restart on a new cluster)."""
    digest = hashlib.sha1(str(run.out_dir.resolve()).encode()).hexdigest()[:10]
    return f"d2align-{digest}"


def read_job_record(run: Run) -> Optional[dict]:
    try:
        record = json.loads((run.out_dir / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "job_id" in record else None


class SlurmScheduler(Scheduler):
    """Submits every run that needs it as one SLURM job and follows the jobs until they end.

    Args (beyond `Scheduler`'s): options: `SlurmOptions`; folder: submitit's folder (its
    job scripts and the stdout / stderr of every task).
    """

    def __init__(self, runs, root, python, retrain, echo, options: SlurmOptions, folder: Path):
        super().__init__(runs, root, python, retrain, echo)
        self.options, self.folder = options, Path(folder)
        self.in_flight: Dict[str, _Job] = {}
        self.last_query = 0.0

    def has_room(self) -> bool:
        return True  # SLURM schedules

    def source_in_flight(self, name: str) -> bool:
        return name in self.in_flight

    @property
    def busy(self) -> bool:
        return bool(self.in_flight)

    def _executor(self, run: Run):
        import submitit

        o = self.options
        executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        params: Dict[str, Any] = dict(
            timeout_min=o.time_min,
            nodes=o.nodes_per_run,
            tasks_per_node=o.tasks_per_node,
            name=_job_name(run),
        )
        if o.partition:
            params["slurm_partition"] = o.partition
        if o.gpus_per_run:
            params["gpus_per_node"] = o.gpus_per_run
        if o.cpus_per_run:
            params["cpus_per_task"] = o.cpus_per_run
        if o.mem_gb:
            params["mem_gb"] = o.mem_gb
        extra = o.additional_parameters()
        source = self.in_flight.get(run.weights_from or "")
        if source is not None:
            extra.update(dependency=f"afterok:{source.job_id}", kill_on_invalid_dep="yes")
        if extra:
            params["slurm_additional_parameters"] = extra
        executor.update_parameters(**params)
        return executor

    def _attachable(self, run: Run) -> Optional[str]:
        """The job id of a job still in SLURM that trains `run` (submitted by an earlier,
        detached, invocation), or None."""
        record = read_job_record(run)
        if record is None:
            return None
        job_id = str(record["job_id"])
        state = slurm_states([job_id]).get(job_id)
        if state is None or state.terminal or state.name != record.get("name"):
            return None
        return job_id

    def start_run(self, run: Run, lock: DirLock, resume: bool, resumed_from) -> None:
        job_id = self._attachable(run)
        if job_id is not None:
            self.in_flight[run.name] = _Job(run, job_id, lock, time.time(), resumed_from)
            self.echo(f"[suite] {run.name}: following SLURM job {job_id} (submitted earlier)")
            return
        try:
            job = self._executor(run).submit(
                TrainingJob(run, self.python, self.root, self.options.gpus_per_run)
            )
        except Exception as e:  # sbatch refused it (bad partition, resources ...): this run fails
            lock.release()
            said = str(e).strip().splitlines()
            reason = f"sbatch refused the job: {said[-1] if said else type(e).__name__}"
            self.outcomes[run.name] = Outcome("failed", reason=reason)
            self.echo(f"[suite] {run.name}: FAILED ({reason})")
            return
        record = {
            "job_id": str(job.job_id),
            "name": _job_name(run),
            "folder": str(self.folder),
            "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
            "host": socket.gethostname(),
        }
        atomic_write_text(run.out_dir / JOB_FILE, json.dumps(record, indent=2))
        self.in_flight[run.name] = _Job(run, str(job.job_id), lock, time.time(), resumed_from)
        self.echo(
            f"[suite] {run.name}: {starting(run, resumed_from)} as SLURM job {job.job_id} -> "
            f"{run.out_dir} (log: {run.log_file})"
        )

    def _task_logs(self, job: _Job) -> List[Path]:
        return sorted(self.folder.glob(f"{job.job_id}_*_log.err"))

    def _job_failure(self, job: _Job) -> str:
        """How the job's training failed, as its `TrainingFailed` said (the first task that
        says it), or "" (the job did not get that far: cancelled, timed out, node failure)."""
        for log in self._task_logs(job):
            try:
                said = FAILURE_LINE.findall(log.read_text(errors="replace"))
            except OSError:
                continue
            if said:
                return said[-1].strip()
        return ""

    def reap(self) -> None:
        if not self.in_flight or time.time() - self.last_query < QUERY_EVERY_S:
            return
        self.last_query = time.time()
        states = slurm_states([j.job_id for j in self.in_flight.values()])
        for name, job in list(self.in_flight.items()):
            state = states.get(job.job_id)
            if state is not None and not state.terminal:
                job.state = state
                continue
            del self.in_flight[name]
            job.lock.release()
            run, seconds = job.run, time.time() - job.start
            source = self.outcomes.get(run.weights_from or "")
            if state is not None and state.state == "CANCELLED" and source and not source.ok:
                reason = f"evaluates the model of {run.weights_from}, which {source.status}"
                self.outcomes[name] = Outcome("skipped", reason=reason)
                self.echo(f"[suite] {name}: skipped ({reason})")
                continue
            if state is None:
                why = f"SLURM job {job.job_id} is no longer known to squeue or sacct"
                code = 0 if (run.results_file.is_file()) else None
            else:
                why = f"SLURM job {job.job_id} {state.state}"
                why += f" ({state.reason})" if state.reason else ""
                why += f", exit code {state.exit_code}" if state.exit_code else ""
                why += f" but left no {run.results_file.name}" if state.state == "COMPLETED" else ""
                said = self._job_failure(job)
                why += f": {said}" if said else ""
                code = 0 if state.state == "COMPLETED" else None
            tails = ((p.name, read_log_tail(p, 8)) for p in self._task_logs(job))
            extra = "\n".join(f"--- {name}\n{tail}" for name, tail in tails if tail)
            self.record_exit(run, code, seconds, job.resumed_from, why_failed=why, extra_tail=extra)

    def stop_all(self, grace_s: float) -> None:
        ids = [j.job_id for j in self.in_flight.values()]
        self.echo(f"[suite] cancelling {len(ids)} SLURM job(s): {' '.join(ids)}")
        _slurm(["scancel"] + ids)
        deadline = time.time() + max(60.0, grace_s)
        while time.time() < deadline:
            states = slurm_states(ids)
            if all(s.terminal for s in states.values()):
                break
            time.sleep(1.0)
        else:
            self.echo("[suite] some jobs are still listed as active by SLURM: check squeue")
        for job in self.in_flight.values():
            job.lock.release()
        self.in_flight.clear()

    def status_line(self) -> str:
        parts, remaining = [], []
        for job in self.in_flight.values():
            st = job.state
            where = f"SLURM {job.job_id} {st.state}"
            if st.state == "RUNNING":
                progress = read_progress(job.run.log_file)
                parts.append(f"{job.run.name}: {where}, {progress.describe(job.run.max_iter)}")
                remaining.append(progress.eta_s)
            else:
                parts.append(f"{job.run.name}: {where}" + (f" ({st.reason})" if st.reason else ""))
                remaining.append(None)
        parts.append(self.overall(remaining, {}, max(1, len(self.in_flight))))
        return f"[suite {format_seconds(time.time() - self.start)}] " + " | ".join(parts)

    def describe_in_flight(self) -> str:
        """One line per job still in flight (for `--detach`)."""
        return "\n".join(
            f"  {j.run.name}: SLURM job {j.job_id} {j.state.state} -> {j.run.out_dir}"
            for j in self.in_flight.values()
        )
