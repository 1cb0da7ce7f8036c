"""Issue 25: `tools/compare.py --launcher slurm`, against a real single-node SLURM cluster.

The cluster (`d2align.suite.single_node_cluster.SlurmCluster`: munged, slurmctld, slurmd from
Debian's packages, installed by the fixture when missing) is started once for the module.
Every test uses its own folders (job ids restart at 1 on a fresh cluster) and guards every
wait with a deadline.

* the quick suite through SLURM gives the table of the same suite run locally (same seeds, one
  thread per run in both: the trainings are deterministic);
* a second invocation reuses every finished run and submits nothing;
* `--detach` submits and returns; the same command then follows the jobs and writes the table;
* `scancel` of one run's job: a FAILED row naming the SLURM state, the other row completes;
* `scontrol requeue` of a running job: it resumes from its checkpoint and ends at the iteration
  count of an uninterrupted run;
* SIGTERM to compare.py: no job of the suite left in `squeue`;
* a training that crashes (SIGSEGV) inside its job: a FAILED row that names the signal and the
  checkpoint the same command resumes from, at once (not after the wait for SLURM's SIGKILL);
* a 2-task job standing for two machines (gloo) has the loss of one process with the whole batch.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from d2align.suite.single_node_cluster import SlurmCluster, slurm_unavailable
from d2align.testing import (
    ROOT,
    crashing_interpreter,
    exact_step_opts,
    exact_step_setup,
    read_metrics,
)

pytestmark = pytest.mark.slurm

COMPARE = str(Path(ROOT) / "tools" / "compare.py")
FASTER = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
IOUNET = "projects/IoUNet/configs/shapes/iounet_R18_FPN_scratch.yaml"
IOUNET_REFINE = "projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml"
RETINANET = "configs/shapes/retinanet_R18_FPN_scratch.yaml"
DEADLINE_S = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_unavailable()
    if why:
        pytest.skip(why)
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    old = os.environ.get("SLURM_CONF")
    os.environ.update(c.env)
    yield c
    c.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _suite(path: Path, runs: list, name: str = "slurm_test") -> Path:
    lines = [f"name: {name}", "runs:"]
    for run in runs:
        lines.append(f"  - label: {run['label']}")
        lines.append(f"    config: {run['config']}")
        for key in ("weights_from", "baseline"):
            if key in run:
                lines.append(f"    {key}: {run[key]}")
        if "opts" in run:
            lines.append(f"    opts: {json.dumps(run['opts'])}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _compare(*args, **popen):
    cmd = [sys.executable, COMPARE, *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _finish(proc, timeout=DEADLINE_S):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"compare.py did not finish in {timeout} s:\n{out[-4000:]}")
    return proc.returncode, out


def _wait_for(predicate, what, timeout=DEADLINE_S, cluster=None):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            extra = "\n" + cluster.logs() if cluster is not None else ""
            pytest.fail(f"timed out waiting for {what}{extra}")
        time.sleep(0.5)


def _start_on_slurm(tmp_path, runs):
    """compare.py on a quick suite of `runs` through SLURM, in the background; returns the
    process, the output folder and {label: the run's folder} once every job is submitted."""
    suite = _suite(tmp_path / "suite.yaml", runs)
    out = tmp_path / "out"
    proc = _compare(
        "--suite", suite, "--quick", "--out", out, "--launcher", "slurm",
        "--slurm-cpus-per-run", "1", "--poll", "5",
    )  # fmt: skip
    records = lambda: list(out.rglob("slurm_job.json"))  # noqa: E731
    _wait_for(lambda: len(records()) == len(runs), f"{len(runs)} job(s) submitted")
    folders = {r["label"]: out / "runs" / r["label"] for r in runs}
    assert sorted(p.parent for p in records()) == sorted(folders.values())
    return proc, out, folders


def _submitted(log: str) -> list:
    """The job ids compare.py says it submitted."""
    return re.findall(r"as SLURM job (\d+) ->", log)


def _rows(out: Path):
    return {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}


def _job_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "slurm_job.json").read_text())


def _running(cluster, job_id) -> bool:
    return f"{job_id} RUNNING" in cluster.jobs()


QUALITY = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "APs", "APm", "APl")
THREE_ROWS = [
    {"label": "Faster R-CNN", "config": FASTER},
    {"label": "IoU-Net", "config": IOUNET, "baseline": "Faster R-CNN"},
    {"label": "IoU-Net refine", "config": IOUNET_REFINE, "weights_from": "IoU-Net"},
]


@pytest.fixture(scope="module")
def slurm_table(cluster, tmp_path_factory):
    """The three-row quick suite through SLURM (with an evaluation that depends on a training)."""
    tmp = tmp_path_factory.mktemp("slurm_table")
    suite = _suite(tmp / "suite.yaml", THREE_ROWS)
    out = tmp / "slurm"
    before = len(cluster.jobs())
    code, log = _finish(
        _compare(
            "--suite", suite, "--quick", "--out", out, "--launcher", "slurm",
            "--slurm-cpus-per-run", "1", "--poll", "5",
        )
    )  # fmt: skip
    assert code == 0, log[-4000:]
    return suite, out, log, len(cluster.jobs()) - before


def test_slurm_gives_the_local_table(slurm_table, tmp_path):
    suite, out, log, submitted = slurm_table
    assert submitted == 3 and len(_submitted(log)) == 3, log[-3000:]
    code, local_log = _finish(
        _compare("--suite", suite, "--quick", "--out", tmp_path / "local", "--jobs", "2")
    )
    assert code == 0, local_log[-4000:]
    remote, local = _rows(out), _rows(tmp_path / "local")
    assert set(remote) == set(local) == {r["label"] for r in THREE_ROWS}
    for name, row in local.items():
        assert row["status"] == remote[name]["status"] == "ok"
        for key in QUALITY:
            assert remote[name][key] == local[name][key], (name, key)
        for key in ("pearson_score_vs_iou", "pos50", "pos70", "pos90", "num_parameters"):
            assert remote[name][key] == local[name][key], (name, key)
    # the refinement evaluated the model the IoU-Net job trained
    refine = out / "runs"
    stamps = [json.loads(p.read_text()) for p in refine.rglob("suite_run.json")]
    assert sum(bool(s.get("weights_sha256")) for s in stamps) == 1


def test_a_second_invocation_submits_nothing(cluster, slurm_table):
    suite, out, _, _ = slurm_table
    before = cluster.jobs()
    code, log = _finish(
        _compare("--suite", suite, "--quick", "--out", out, "--launcher", "slurm", "--poll", "5")
    )
    assert code == 0, log[-3000:]
    assert _submitted(log) == []
    assert "(0 run(s) trained or evaluated now, 3 reused)" in log
    assert cluster.jobs() == before


def test_detach_returns_and_the_same_command_collects(cluster, tmp_path):
    suite = _suite(tmp_path / "suite.yaml", THREE_ROWS[:1])
    args = ["--suite", suite, "--quick", "--out", tmp_path / "out", "--launcher", "slurm",
            "--slurm-cpus-per-run", "1", "--poll", "5"]  # fmt: skip
    start = time.time()
    code, log = _finish(_compare(*args, "--detach"), timeout=60)
    assert code == 0 and "detached; SLURM jobs in flight" in log, log[-3000:]
    assert time.time() - start < 30  # it did not wait for the training
    assert not (tmp_path / "out" / "results.json").exists()
    before = cluster.jobs()
    code, log = _finish(_compare(*args))
    assert code == 0, log[-3000:]
    assert "following SLURM job" in log and _submitted(log) == []
    assert _rows(tmp_path / "out")["Faster R-CNN"]["status"] == "ok"
    assert len(cluster.jobs()) == len(before)


def test_scancel_of_one_job_is_a_failed_row_and_the_other_completes(cluster, tmp_path):
    runs = [
        {"label": "long", "config": FASTER, "opts": ["SOLVER.MAX_ITER", "5000"]},
        {"label": "short", "config": RETINANET},
    ]
    proc, out, folders = _start_on_slurm(tmp_path, runs)
    job_id = _job_record(folders["long"])["job_id"]
    _wait_for(lambda: _running(cluster, job_id), f"job {job_id} running", cluster=cluster)
    cluster.run("scancel", job_id)
    code, log = _finish(proc)
    assert code == 1, log[-3000:]
    rows = _rows(out)
    assert rows["short"]["status"] == "ok"
    (failed,) = rows["long"]["runs"]
    assert failed["status"] == "failed"
    assert f"SLURM job {job_id} CANCELLED" in failed["reason"]
    assert "FAILED (SLURM job" in log


@pytest.mark.parametrize("how", ["scontrol requeue", "preemption signal"])
def test_a_requeued_job_resumes_from_its_checkpoint(cluster, tmp_path, how):
    """`scontrol requeue` (an administrator, or a preemption by requeue), or the signal SLURM
    sends before a preemption or the time limit (submitit's USR2: `TrainingJob` is
    Checkpointable, submitit requeues it): the job starts again and resumes from the run's
    last checkpoint, ending at the iteration count of an uninterrupted run."""
    max_iter, period = 60, 10
    runs = [
        {
            "label": "requeued",
            "config": FASTER,
            "opts": ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", str(period)],
        }
    ]
    proc, out, folders = _start_on_slurm(tmp_path, runs)
    run_dir = folders["requeued"]
    job_id = _job_record(run_dir)["job_id"]
    _wait_for(lambda: (run_dir / "model_0000019.pth").exists(), "a checkpoint", cluster=cluster)
    if how == "scontrol requeue":
        cluster.run("scontrol", "requeue", job_id)
    else:  # to the job's steps, where submitit's handler runs (as --signal=USR2@90 does)
        cluster.run("scancel", "--signal=USR2", job_id)
    code, log = _finish(proc)
    assert code == 0, log[-3000:]
    train_log = (run_dir / "train_log.txt").read_text()
    starts = [ln for ln in train_log.splitlines() if ln.startswith(f"[slurm] job {job_id},")]
    assert len(starts) == 2, train_log[-3000:]
    assert "--resume" in starts[1] and "--resume" not in starts[0]
    # the second start continued after a checkpoint (detectron2 logs where it starts from)
    second = train_log.split(starts[1], 1)[1]
    resumed_at = int(re.search(r"Starting training from iteration (\d+)", second).group(1))
    assert resumed_at >= period and resumed_at % period == 0, resumed_at
    iterations = [m["iteration"] for m in read_metrics(run_dir) if "total_loss" in m]
    assert iterations[-1] == max_iter - 1  # as an uninterrupted run ends
    assert _rows(out)["requeued"]["status"] == "ok"
    if how == "preemption signal":
        job_log = (out / "slurm" / f"{job_id}_0_log.err").read_text()
        assert "Caught signal SIGUSR2" in job_log and "preempted" in job_log, job_log[-2000:]


def test_sigterm_to_compare_cancels_every_job(cluster, tmp_path):
    runs = [
        {"label": "a", "config": FASTER, "opts": ["SOLVER.MAX_ITER", "5000"]},
        {"label": "b", "config": RETINANET, "opts": ["SOLVER.MAX_ITER", "5000"]},
    ]
    proc, out, folders = _start_on_slurm(tmp_path, runs)
    ids = [_job_record(folder)["job_id"] for folder in folders.values()]
    _wait_for(lambda: all(_running(cluster, i) for i in ids), "both jobs running", cluster=cluster)
    proc.send_signal(signal.SIGTERM)
    code, log = _finish(proc, timeout=120)
    assert code == 143, log[-3000:]
    active = [line for line in cluster.active_jobs() if line.split()[0] in ids]
    assert active == [], active
    assert "cancelling 2 SLURM job(s)" in log


def test_a_crashed_training_is_a_failed_row_naming_the_signal_and_the_resume(cluster, tmp_path):
    """The job's training is killed by SIGSEGV after a checkpoint: the row says so, as a local
    run's does, with the checkpoint the same command resumes from, and the job does not wait
    for a SIGKILL that SLURM never sends (that wait is for a cancelled or requeued training)."""
    from d2align.suite import execute, plan_runs, suite_of_configs
    from d2align.suite.slurm import KILLED_WAIT_S, SlurmScheduler
    from d2align.suite.slurm_options import SlurmOptions

    out_dir = tmp_path / "run"
    suite = suite_of_configs([Path(ROOT) / FASTER], Path(ROOT))
    (run,) = plan_runs(suite, Path(ROOT), extra_opts=["OUTPUT_DIR", str(out_dir)])[
        "faster_rcnn_R18_FPN_scratch"
    ]
    out_dir.mkdir(parents=True)
    (out_dir / "last_checkpoint").write_text("model_0000499.pth")
    folder = tmp_path / "slurm"

    def scheduler(*args):
        return SlurmScheduler(*args, options=SlurmOptions(cpus_per_run=1), folder=folder)

    start = time.time()
    outcome = execute(
        [run],
        1,
        Path(ROOT),
        python=crashing_interpreter(tmp_path / "python"),
        poll_s=1.0,
        echo=lambda line: None,
        scheduler=scheduler,
    )[run.name]
    took = time.time() - start
    assert outcome.status == "failed", outcome
    assert (
        "FAILED" in outcome.reason and "train_net.py killed by SIGSEGV (a crash;" in outcome.reason
    )
    assert "the same command resumes it from model_0000499.pth" in outcome.reason
    assert took < KILLED_WAIT_S, f"the job waited {took:.0f} s for a SIGKILL"
    assert "Fatal Python error: Segmentation fault" in run.log_file.read_text()


def test_two_tasks_standing_for_two_machines_equal_one_process(cluster, tmp_path):
    """One SGD step of a 2-task job (2 machines x 1 CPU process, gloo, batch 2 each) has the
    loss of one local process with the batch of 4 (`d2align.testing.exact_step_opts`: an
    RPN-only model where that equality is exact up to float summation)."""
    import submitit

    from d2align.suite.runs import Run
    from d2align.suite.slurm import TrainingJob, slurm_states

    data, init, _ = exact_step_setup(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    config = Path(ROOT) / FASTER
    single = subprocess.run(
        [sys.executable, str(Path(ROOT) / "tools" / "train_net.py"), "--config-file", str(config)]
        + exact_step_opts(data, one, init),
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    opts = tuple(exact_step_opts(data, two, init))
    run = Run("two machines", config, None, opts, two, max_iter=1)
    two.mkdir()
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(timeout_min=10, nodes=1, tasks_per_node=2, cpus_per_task=1)
    job_id = str(executor.submit(TrainingJob(run, sys.executable, Path(ROOT), 0)).job_id)
    _wait_for(
        lambda: getattr(slurm_states([job_id]).get(job_id), "terminal", False),
        f"job {job_id} to end",
        cluster=cluster,
    )
    state = slurm_states([job_id])[job_id]
    log = (two / "train_log.txt").read_text()
    assert state.state == "COMPLETED", (state, log[-3000:])
    assert "machine 0 of 2" in log.splitlines()[0] and "--num-machines 2" in log.splitlines()[0]
    assert (
        (two / "train_log.machine1.txt")
        .read_text()
        .startswith(f"[slurm] job {job_id}, machine 1 of 2")
    )
    loss_one, loss_two = read_metrics(one)[0]["total_loss"], read_metrics(two)[0]["total_loss"]
    assert loss_one > 0.05  # a real loss, not a vacuous comparison
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
