"""The suite runner: a killed suite leaves no process and resumes from the checkpoint; a failed
run is reported while the others finish; Ctrl-C and exceptions terminate the trainings; the
output folder's lock refuses a second suite and takes over a dead one's."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from d2align.suite import DirLock, execute, main, plan_runs, suite_of_configs
from d2align.testing import crashing_interpreter, live_processes, process_gone

ROOT = Path(__file__).resolve().parents[1]
FASTER = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"


class _Suite:
    """tools/compare.py in a process, its output collected line by line."""

    def __init__(self, args, data: Path):
        cmd = [sys.executable, str(ROOT / "tools" / "compare.py")] + [str(a) for a in args]
        env = dict(os.environ, D2ALIGN_DATASETS=str(data))
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def pids(self):
        """{run name: pid} of the trainings it started."""
        out = {}
        for line in self.lines:
            if "(pid " in line:
                name = line.split("] ", 1)[1].split(": ", 1)[0]
                out[name] = int(line.split("(pid ", 1)[1].split(")")[0])
        return out

    def wait_for(self, condition, timeout: float = 180.0):
        deadline = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, self.text[-3000:]
            assert time.time() < deadline, self.text[-3000:]
            time.sleep(0.2)

    def finish(self, timeout: float = 300.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("suite_data")


def _write_suite(path: Path, runs, jobs: int = 2) -> Path:
    path.write_text(json.dumps({"name": "t", "jobs": jobs, "runs": runs}))  # JSON is YAML
    return path


@pytest.mark.slow
def test_killed_suite_leaves_no_process_then_resumes_and_reports_the_failure(tmp_path, data):
    # A trains 24 iterations with a checkpoint every 4 and one data-loader worker (a grandchild
    # process); B fails at once (a NUM_CLASSES that does not match the data).
    suite = _write_suite(
        tmp_path / "t.yaml",
        [
            {
                "label": "A",
                "config": FASTER,
                "opts": [
                    "SOLVER.MAX_ITER",
                    24,
                    "SOLVER.CHECKPOINT_PERIOD",
                    4,
                    "DATALOADER.NUM_WORKERS",
                    1,
                ],
            },
            {"label": "B", "config": FASTER, "opts": ["MODEL.ROI_HEADS.NUM_CLASSES", 3]},
        ],
    )
    out = tmp_path / "out"
    args = ["--suite", suite, "--out", out, "--quick", "--poll", "1"]
    first = _Suite(args, data)
    checkpoint = out / "runs" / "A" / "last_checkpoint"
    first.wait_for(checkpoint.exists)
    pids = first.pids()
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish(60) == 143, first.text[-3000:]
    assert "Run the same command again to continue" in first.text
    assert set(pids) <= {"A", "B"} and "A" in pids
    for pid in pids.values():
        assert process_gone(pid) and live_processes(group=pid) == [], first.text[-3000:]
    stopped_at = checkpoint.read_text().strip()  # e.g. model_0000003.pth
    assert (out / "runs" / "A" / "final_results.json").exists() is False

    second = _Suite(args, data)
    assert second.finish() == 1, second.text[-3000:]  # 1: a run failed
    assert f"A: resuming from {stopped_at}" in second.text
    log = (out / "runs" / "A" / "train_log.txt").read_text()
    starts = [
        int(ln.rsplit(" ", 1)[1])
        for ln in log.splitlines()
        if "Starting training from iteration" in ln
    ]
    assert starts == [0, int(stopped_at[6:13]) + 1]  # the second session went on from there

    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    a, b = rows["A"], rows["B"]
    assert a["status"] == "ok" and a["runs"][0]["resumed_from"] == stopped_at
    assert a["AP50"] is not None and a["num_seeds"] == 1
    assert b["status"] == "failed" and b["num_seeds"] == 0 and b["AP"] is None
    (run_b,) = b["runs"]
    assert run_b["returncode"] == 1 and run_b["reason"] == "exit 1"
    assert "MODEL.ROI_HEADS.NUM_CLASSES" in run_b["log_tail"]
    md = (out / "results.md").read_text()
    assert "| B — FAILED | - | - |" in md
    assert "Failed runs:" in md and "MODEL.ROI_HEADS.NUM_CLASSES" in md.split("Failed runs:")[1]


@pytest.mark.slow
def test_ctrl_c_terminates_the_training(tmp_path, data):
    suite = _write_suite(
        tmp_path / "t.yaml",
        [
            {"label": "long", "config": FASTER, "opts": ["SOLVER.MAX_ITER", 100000]},
        ],
        jobs=1,
    )
    run = _Suite(["--suite", suite, "--out", tmp_path / "out", "--quick", "--poll", "1"], data)
    run.wait_for(lambda: "long" in run.pids())
    pid = run.pids()["long"]
    time.sleep(1.0)
    assert not process_gone(pid)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(60) == 130, run.text[-3000:]
    assert process_gone(pid) and live_processes(group=pid) == []


def test_exception_in_the_suite_terminates_the_training(tmp_path):
    suite = suite_of_configs([ROOT / FASTER], ROOT)
    opts = ["OUTPUT_DIR", str(tmp_path / "run"), "SOLVER.MAX_ITER", "100000"]
    (run,) = plan_runs(suite, ROOT, extra_opts=opts)["faster_rcnn_R18_FPN_scratch"]
    started = []

    def echo(line):
        if "(pid " in line:
            started.append(int(line.split("(pid ", 1)[1].split(")")[0]))
            raise RuntimeError("a bug in the suite")

    with pytest.raises(RuntimeError, match="a bug in the suite"):
        execute([run], 1, ROOT, echo=echo, poll_s=0.5)
    (pid,) = started
    assert process_gone(pid) and live_processes(group=pid) == []


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_a_crash_names_the_signal_leaves_the_python_stack_and_says_how_to_resume(
    tmp_path, with_checkpoint
):
    suite = suite_of_configs([ROOT / FASTER], ROOT)
    out_dir = tmp_path / "run"
    (run,) = plan_runs(suite, ROOT, extra_opts=["OUTPUT_DIR", str(out_dir)])[
        "faster_rcnn_R18_FPN_scratch"
    ]
    if with_checkpoint:  # the training ended (model_final.pth), then evaluation crashed
        out_dir.mkdir(parents=True)
        (out_dir / "last_checkpoint").write_text("model_final.pth")
    python = crashing_interpreter(tmp_path / "python")
    outcome = execute([run], 1, ROOT, python=python, echo=lambda line: None, poll_s=0.2)[run.name]

    assert outcome.status == "failed" and outcome.returncode == -signal.SIGSEGV
    assert outcome.reason.startswith("killed by SIGSEGV (a crash;")
    resume_hint = "the same command resumes it from model_final.pth"
    assert (resume_hint in outcome.reason) == with_checkpoint
    log = run.log_file.read_text()
    # faulthandler's dump, which a plain interpreter would not write
    assert "Fatal Python error: Segmentation fault" in log
    assert 'File "<string>", line 1' in log


def _results(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"results": {"bbox": {"AP": 1.0}}, "speed": {"train_s_per_iter": 0.1}}
    (run_dir / "final_results.json").write_text(json.dumps(payload))


def test_lock_refuses_a_second_suite_and_takes_over_a_dead_ones(tmp_path):
    _results(tmp_path / "run")
    out = tmp_path / "out"
    argv = [str(ROOT / FASTER), "--out", str(out), "--opts", "OUTPUT_DIR", str(tmp_path / "run")]
    holder = DirLock(out, "suite.lock").acquire()  # another suite on the same folder
    with pytest.raises(SystemExit) as refused:
        main(argv, root=ROOT)
    message = str(refused.value)
    assert f"{out} is in use by another suite: PID {os.getpid()}" in message
    assert "refusing to start" in message and not (out / "results.md").exists()
    holder.release()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / "suite.lock").write_text(json.dumps({"pid": dead.pid, "host": "here"}))  # stale
    assert main(argv, root=ROOT) == 0
    assert (out / "results.md").exists()
    assert DirLock(out, "suite.lock").try_acquire() is None  # released at the end


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity API")
def test_threads_per_run_follow_the_cpu_affinity(tmp_path, monkeypatch):
    """Two suites pinned to one core each (taskset) must not give each training every core's
    worth of threads: oversubscribed OpenMP threads ran ~10x slower on the 2-core machine."""
    from d2align.suite import runner

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(runner, "visible_gpus", lambda: [])

    def threads(jobs):
        slots = runner.LocalScheduler([], jobs, tmp_path, sys.executable, False, print).slots
        assert all(env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] for env, _ in slots)
        assert all("CUDA_VISIBLE_DEVICES" not in env for env, _ in slots)
        return [env["OMP_NUM_THREADS"] for env, _ in slots]

    assert threads(1) == ["3"]
    assert threads(2) == ["1", "1"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert threads(4) == ["1"] * 4


def test_concurrent_runs_get_their_own_gpus_and_cores():
    """--jobs N on a machine with several GPUs: each concurrent run its own devices
    (CUDA_VISIBLE_DEVICES) and its own block of cores; fewer GPUs than runs: round robin."""
    from d2align.system import job_slots

    slots = job_slots(2, list(range(16)), ["0", "1", "2", "3"])
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in slots] == ["0,1", "2,3"]
    assert [cores for _, cores in slots] == [list(range(8)), list(range(8, 16))]
    assert [env["OMP_NUM_THREADS"] for env, _ in slots] == ["8", "8"]
    slots = job_slots(4, [0, 1], ["3", "5"])  # CUDA_VISIBLE_DEVICES="3,5", 2 cores
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in slots] == ["3", "5", "3", "5"]
    assert [cores for _, cores in slots] == [[0], [1], [0], [1]]
    assert all("CUDA_VISIBLE_DEVICES" not in env for env, _ in job_slots(2, [0, 1], []))


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    from d2align.system import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 7")
    assert visible_gpus() == ["2", "7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


@pytest.mark.parametrize("content", ["", '{"results": {"bbox": {"AP"', "[1, 2]"])
def test_an_empty_or_truncated_results_file_is_not_a_finished_run(tmp_path, content):
    """A full disk leaves an empty or half-written final_results.json: the run is trained
    again, not reported as a finished row of '-'."""
    from d2align.suite.runner import finished

    suite = suite_of_configs([ROOT / FASTER], ROOT)
    opts = ["OUTPUT_DIR", str(tmp_path / "run")]
    (run,) = plan_runs(suite, ROOT, extra_opts=opts)["faster_rcnn_R18_FPN_scratch"]
    _results(tmp_path / "run")
    assert finished(run)
    run.results_file.write_text(content)
    assert not finished(run)


def test_a_corrupt_last_checkpoint_fails_that_run_only(tmp_path):
    """One run's `last_checkpoint` holds bytes that are not text: that run is FAILED naming the
    file, the suite goes on (the other run here reuses its results)."""
    from d2align.suite.runner import LocalScheduler

    suite = suite_of_configs(
        [ROOT / FASTER, ROOT / "configs/shapes/retinanet_R18_FPN_scratch.yaml"], ROOT
    )
    planned = plan_runs(suite, ROOT, seeds=[1])
    (broken,) = planned["faster_rcnn_R18_FPN_scratch"]
    (other,) = planned["retinanet_R18_FPN_scratch"]
    broken = dataclasses.replace(broken, out_dir=tmp_path / "broken")
    other = dataclasses.replace(other, out_dir=tmp_path / "other")
    broken.out_dir.mkdir()
    (broken.out_dir / "last_checkpoint").write_bytes(b"\xff\xfe\x00model_0000099.pth\x80")
    _results(other.out_dir)
    lines = []
    scheduler = LocalScheduler([broken, other], 2, ROOT, sys.executable, False, lines.append)
    scheduler.launch_ready()
    assert not scheduler.running and not scheduler.pending
    outcome = scheduler.outcomes[broken.name]
    assert outcome.status == "failed" and str(broken.out_dir / "last_checkpoint") in outcome.reason
    assert scheduler.outcomes[other.name].status == "reused"
    assert any("FAILED (unreadable" in line for line in lines)


def _faster_run(tmp_path, *opts):
    suite = suite_of_configs([ROOT / FASTER], ROOT)
    extra = ["OUTPUT_DIR", str(tmp_path / "run"), *opts]
    (run,) = plan_runs(suite, ROOT, extra_opts=extra)["faster_rcnn_R18_FPN_scratch"]
    return run


def test_one_folder_spelled_two_ways_is_one_folder(tmp_path):
    from d2align.suite.runs import check_output_dirs

    a = _faster_run(tmp_path)
    b = dataclasses.replace(a, label="other", out_dir=tmp_path / "zz" / ".." / "run", seed=7)
    with pytest.raises(ValueError, match="would both write into " + re.escape(str(a.out_dir))):
        check_output_dirs([a, b], suite_of_configs([ROOT / FASTER], ROOT))


def test_results_of_another_run_in_the_folder_are_not_reused(tmp_path):
    """A garbled suite_run.json, or a training by hand with other settings into the row's
    folder (its config.yaml says SEED 5 and another learning rate): refused, naming the keys."""
    from d2align.engine import build_config

    run = _faster_run(tmp_path, "SEED", "3")
    _results(run.out_dir)
    assert run.foreign_files(ROOT) is None  # results without a record: nothing to contradict
    (run.out_dir / "suite_run.json").write_text('{"config": "configs/sh')
    assert "suite_run.json is unreadable" in run.foreign_files(ROOT)
    (run.out_dir / "suite_run.json").unlink()
    by_hand = build_config(str(ROOT / FASTER), ["SEED", "5", "SOLVER.BASE_LR", "0.5"])
    (run.out_dir / "config.yaml").write_text(by_hand.dump())
    problem = run.foreign_files(ROOT)
    assert "trained with other settings" in problem
    assert "SEED: 5 -> 3" in problem and "SOLVER.BASE_LR: 0.5 -> " in problem
    same = build_config(str(ROOT / FASTER), ["SEED", "3", "OUTPUT_DIR", "elsewhere"])
    (run.out_dir / "config.yaml").write_text(same.dump())
    assert run.foreign_files(ROOT) is None  # the same settings (OUTPUT_DIR names a place)


def test_an_evaluation_is_redone_when_its_model_was_retrained(tmp_path):
    """An evaluation row records the sha256 of the model it evaluated; when its source run is
    trained again, the old evaluation is not reused."""
    from d2align.suite.runner import file_digest, finished

    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"model A")
    run = _faster_run(tmp_path, "MODEL.WEIGHTS", str(weights))
    run = dataclasses.replace(run, weights_from="source")
    assert run.weights_file == weights
    _results(run.out_dir)
    assert not finished(run)  # results without a record of the model they evaluated
    stamp = dict(run.stamp(ROOT), weights_sha256=file_digest(weights))  # as the runner records
    (run.out_dir / "suite_run.json").write_text(json.dumps(stamp))
    assert finished(run)
    time.sleep(0.01)
    weights.write_bytes(b"model B, retrained")  # the source was trained again
    assert not finished(run)


def test_a_wait_for_another_suites_folder_is_not_shown_after_it_ends(tmp_path, monkeypatch):
    """Two suites sharing a run: while the other suite holds the run's folder the status line
    says so; once the holder is gone and this suite has no free slot, the run waits for a slot,
    not for the holder (the status line once kept naming a finished process); then it is
    reused from the other suite's results."""
    from d2align.suite.runner import RUN_LOCK, LocalScheduler

    run = _faster_run(tmp_path)
    holder = DirLock(run.out_dir, RUN_LOCK, "suite run").acquire()  # the other suite trains it
    scheduler = LocalScheduler([run], 1, ROOT, sys.executable, False, print)
    scheduler.launch_ready()
    assert scheduler.pending == [run]
    assert f"waiting for PID {os.getpid()} (its folder)" in scheduler.status_line()

    _results(run.out_dir)  # the other suite finishes and lets go of the folder
    holder.release()
    monkeypatch.setattr(scheduler, "has_room", lambda: False)  # this suite's slot is busy
    scheduler.launch_ready()
    assert "waiting for PID" not in scheduler.status_line() and scheduler.pending == [run]

    monkeypatch.setattr(scheduler, "has_room", lambda: True)
    scheduler.launch_ready()
    assert not scheduler.pending and scheduler.outcomes[run.name].status == "reused"
