"""The README's main command, `bash scripts/main.sh`, in its quick mode, for real: the headline
suite's trainings and evaluation, the table with differences to each baseline, the noise note,
the figures and the measured wall time."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from d2align.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]


def _current_env(folder: Path) -> Path:
    """A stand-in for the environment `scripts/env.sh` manages: its python runs this test's
    interpreter, and its stamp is the one env.sh computes for this checkout (with env.sh's own
    `_d2align_stamp`), so that env.sh finds it current and neither creates nor rebuilds it."""
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    script = (
        'set -euo pipefail; D2ALIGN_ROOT="$PWD"; eval "$(grep "^TORCH_PINS=" scripts/env.sh)"; '
        'eval "$(sed -n "/^_d2align_ext_stamp() {/,/^}/p" scripts/env.sh)"; '
        'eval "$(sed -n "/^_d2align_stamp() {/,/^}/p" scripts/env.sh)"; _d2align_stamp'
    )
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True)
    stamp = done.stdout.strip()
    assert done.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}", stamp), done.stderr
    (folder / ".d2align-stamp").write_text(stamp + "\n")
    return folder


@pytest.mark.slow
def test_main_command_quick_mode(tmp_path):
    out = tmp_path / "headline"
    env = dict(
        os.environ,
        D2ALIGN_ENV=str(_current_env(tmp_path / "env")),
        D2ALIGN_DATASETS=str(tmp_path / "data"),
    )
    cmd = ["bash", "scripts/main.sh", "--quick", "--out", str(out), "--poll", "2",
           "--opts", "SOLVER.MAX_ITER", "4"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "installing dependencies" not in done.stdout  # env.sh left the environment alone
    assert re.search(r"\[main\] wall time of scripts/main.sh: \d+ min \d\d s", done.stdout)

    headline = load_suite("headline", ROOT)
    payload = json.loads((out / "results.json").read_text())
    assert payload["suite"] == "headline"
    assert payload["quick"].startswith("QUICK smoke run: 4 iterations")
    rows = {r["name"]: r for r in payload["rows"]}
    assert list(rows) == [e.label for e in headline.runs]
    assert all(r["status"] == "ok" and r["runs"][0]["trained_now"] for r in rows.values())
    full, joint = rows["IoU-Net (IoU-NMS + refine)"], rows["IoU-Net (standard NMS)"]
    assert full["weights_from"] == joint["name"]  # evaluated from that training's model
    assert full["train_s_per_iter"] == joint["train_s_per_iter"]
    assert full["num_parameters"] == joint["num_parameters"]
    assert {d["name"] for d in payload["differences"]} == {
        f"{e.label} - {b}" for e in headline.runs for b in e.baselines
    }

    md = (out / "results.md").read_text()
    assert md.startswith("| config [QUICK] | AP |")
    assert "| Δ vs Faster R-CNN |" in md and "| Δ vs RetinaNet |" in md
    assert "ONE training" in md and "AP 19.1, 12.5 with seeds 42, 1" in md
    assert md.split("\n\n")[0] in done.stdout  # the table is printed too
    for png in [out / "ap_vs_iou.png", out / "diagnostics" / "Faster_R-CNN.png"]:
        assert matplotlib.image.imread(png).shape[0] > 200
