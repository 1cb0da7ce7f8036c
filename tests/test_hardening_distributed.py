"""Issue 14, item 6: `--num-gpus 2` on a machine without CUDA trains in 2 CPU processes (gloo).

One SGD step of 2 processes x batch 2 must equal one step of 1 process x batch 4: the same loss
and the same weight update. The model is detectron2's RPN-only detector (`ProposalNetwork`)
with every anchor sampled (RPN.BATCH_SIZE_PER_IMAGE >= anchors per image, POSITIVE_FRACTION 1)
and no flip: its loss is then a deterministic sum over anchors divided by a fixed normaliser,
so the two are equal up to float summation order. (Faster R-CNN samples RoIs at random, and
RetinaNet's loss normaliser is a per-process moving average: neither is equal across process
counts even in exact arithmetic.) Then `--resume` continues the distributed run.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from d2align.engine.launcher import launch_from_command_line
from d2align.testing import (
    EXACT_STEP_CONFIG,
    ROOT,
    exact_step_opts,
    exact_step_setup,
    live_processes,
    process_gone,
    read_metrics,
)

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU processes")

FASTER = EXACT_STEP_CONFIG
_opts = exact_step_opts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A train split of exactly 4 images (none empty) and the initial weights of both runs."""
    root = tmp_path_factory.mktemp("h14_dist")
    data, init, state = exact_step_setup(root)
    return data, init, state


def _train_net(argv):
    script = os.path.join(ROOT, "tools", "train_net.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, script] + argv, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


_metrics = read_metrics


def _weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]


def test_two_cpu_processes_equal_one_with_the_whole_batch(setup, tmp_path):
    data, init, initial = setup
    config = ["--config-file", os.path.join(ROOT, FASTER)]
    one, two = tmp_path / "one", tmp_path / "two"
    launch_from_command_line(argv=config + _opts(data, one, init))  # in this process
    log = _train_net(config + ["--num-gpus", "2"] + _opts(data, two, init))
    assert "2 CPU processes (gloo)" in log
    assert (two / "log.txt.rank1").exists() and not (one / "log.txt.rank1").exists()

    loss_one, loss_two = _metrics(one)[0]["total_loss"], _metrics(two)[0]["total_loss"]
    assert loss_one > 0.05  # a real loss, not a vacuous comparison
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    after_one, after_two = _weights(one), _weights(two)
    moved = 0
    for key, start in initial.items():
        step_one, step_two = after_one[key] - start, after_two[key] - start
        torch.testing.assert_close(step_two, step_one, rtol=1e-3, atol=1e-7)
        moved += int(step_one.abs().max() > 1e-5)
    assert moved >= 10, moved  # steps 100x above the tolerance: RPN head, FPN, backbone

    # --resume after the distributed run: continues at iteration 1, in 2 processes again.
    _train_net(
        config
        + ["--num-gpus", "2", "--resume"]
        + _opts(data, two, init)[:-6]
        + ["SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(two)]
    )
    iterations = [m["iteration"] for m in _metrics(two) if "total_loss" in m]
    assert iterations == [0, 1]
    with open(two / "last_checkpoint") as f:
        assert f.read().strip() == "model_final.pth"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_launcher_leaves_no_rank_behind(setup, tmp_path, sig):
    """`--num-gpus 2` on the CPU, the launcher killed mid-training (SIGKILL: the workers get
    SIGTERM from the kernel; SIGTERM: the launcher terminates them): no rank keeps training
    under PID 1 holding the folder's train.lock."""
    data, init, _ = setup
    argv = ["--config-file", os.path.join(ROOT, FASTER), "--num-gpus", "2"]
    long_run = ["SOLVER.MAX_ITER", "100000", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
    argv += _opts(data, tmp_path, init)[:-8] + long_run + ["OUTPUT_DIR", str(tmp_path)]
    launcher = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py")] + argv,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (tmp_path / "metrics.json").exists():
            time.sleep(0.5)
        workers = live_processes(parent=launcher.pid)
        assert (tmp_path / "metrics.json").exists(), "the ranks never started training"
        ranks = [p for p in workers if "spawn" in open(f"/proc/{p}/cmdline").read()]
        assert len(ranks) == 2, workers
        os.kill(launcher.pid, sig)
        launcher.wait(timeout=60)
        deadline = time.time() + 60
        while time.time() < deadline and any(not process_gone(p) for p in ranks):
            time.sleep(0.5)
        assert not any(not process_gone(p) for p in ranks), "a rank outlived its launcher"
    finally:
        for p in live_processes(parent=launcher.pid) if launcher.poll() is None else []:
            os.kill(p, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
