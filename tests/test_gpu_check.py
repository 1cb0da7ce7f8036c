"""The CPU side of the GPU check (tools/gpu_check.py): its arguments, the steps each part
plans, the skip when no GPU is present, and the time budget."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_arguments_are_checked():
    args = gpu_check.parse_args([])
    assert args.parts == list(gpu_check.PARTS) and args.iters == 50 and args.budget_min == 8
    for bad in (["--iters", "0"], ["--budget-min", "-1"], ["--parts", "everything"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_each_part_plans_its_steps():
    steps = gpu_check.plan(gpu_check.parse_args(["--iters", "7", "--out", "o"]), "PY")
    parts = [s[0] for s in steps]
    assert parts == sorted(parts, key=gpu_check.PARTS.index)  # in the order of PARTS
    assert set(parts) == set(gpu_check.PARTS)
    build = [s for s in steps if s[0] == "build"]
    assert build[0][3] == {"FORCE_CUDA": "1"} and "compiled_with_cuda" in build[1][2][-1]
    train = [s for s in steps if s[0] == "train"]
    assert [s[2][-1] for s in train] == ["False", "True"]  # SOLVER.AMP.ENABLED off, on
    for _, _, argv, _ in train:
        assert argv[argv.index("--opts") + 1 :][:4] == [
            "MODEL.DEVICE",
            "cuda",
            "SOLVER.MAX_ITER",
            "7",
        ]
    # the diagnostics read the models that the AMP training wrote, under the suite's run names
    for _, _, argv, _ in (s for s in steps if s[0] == "diagnostics"):
        weights = Path(argv[argv.index("--weights") + 1])
        assert weights.parts[:4] == ("o", "suites", "headline_amp_true", "runs")
        assert argv[-2:] == ["MODEL.DEVICE", "cuda"]
    only = gpu_check.plan(gpu_check.parse_args(["--parts", "bench"]), "PY")
    assert {s[0] for s in only} == {"bench"} and all("--device" in s[2] for s in only)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip happens without CUDA")
def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu_check.log").exists()
    assert gpu_check.main(["--out", str(tmp_path), "--require-gpu"]) == 1


def test_steps_past_the_budget_are_skipped_and_failures_reported(tmp_path):
    steps = [
        ("tests", "passes", [sys.executable, "-c", "print('hello')"], {}),
        ("bench", "fails", [sys.executable, "-c", "import sys; sys.exit(3)"], {"X_ENV": "1"}),
    ]
    records = gpu_check.run_steps(steps, tmp_path, budget_s=60)
    assert [r["status"] for r in records] == ["ok", "FAILED (exit 3)"]
    log = (tmp_path / "gpu_check.log").read_text()
    assert "hello" in log and "=== [bench] fails: FAILED (exit 3)" in log
    records = gpu_check.run_steps(steps, tmp_path, budget_s=-1)
    assert [r["status"] for r in records] == ["skipped (over budget)"] * 2
