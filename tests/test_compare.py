"""tools/compare.py: reads each config's final_results.json and writes the table and the plot;
trains what is missing (two tiny configs trained end to end, then reused)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from d2align.suite import (
    aggregate,
    last_progress,
    paired_differences,
    read_payload,
    runs_of,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]


def _load_compare():
    spec = importlib.util.spec_from_file_location("d2align_compare", ROOT / "tools" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BBOX = {
    "AP": 40.0,
    "AP50": 70.0,
    "AP60": 60.0,
    "AP70": 50.0,
    "AP75": 45.0,
    "AP80": 30.0,
    "AP90": 5.0,
    "APs": 20.0,
    "APm": 45.0,
    "APl": 55.0,
}
CONFIG = ROOT / "configs" / "shapes" / "faster_rcnn_R18_FPN_scratch.yaml"


def _write_results(run_dir: Path, bbox: dict, train_s: float = 0.5) -> None:
    run_dir.mkdir(parents=True)
    payload = {
        "config_file": "x.yaml",
        "results": {"bbox": bbox},
        "speed": {"train_s_per_iter": train_s, "inference_s_per_image": 0.05},
    }
    (run_dir / "final_results.json").write_text(json.dumps(payload))


def test_table_and_plot_from_existing_results(tmp_path):
    compare = _load_compare()
    run_dir = tmp_path / "run"
    _write_results(run_dir, BBOX)
    out = tmp_path / "cmp"
    compare.main([str(CONFIG), "--out", str(out), "--opts", "OUTPUT_DIR", str(run_dir)], root=ROOT)

    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["name"] == CONFIG.stem and row["num_seeds"] == 1
    assert {k: row[k] for k in BBOX} == BBOX
    assert row["train_s_per_iter"] == 0.5 and row["inference_s_per_image"] == 0.05
    assert row["AP_std"] == 0.0
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| config | AP | AP50 | AP60 | AP70 | AP75 | AP80 | AP90")
    # then: parameters of the config's model, no diagnostics (no detections file), 1 seed
    assert table[2] == (
        f"| {CONFIG.stem} | 40.0 | 70.0 | 60.0 | 50.0 | 45.0 | 30.0 | 5.0 | "
        "20.0 | 45.0 | 55.0 | 0.500 | 0.050 | 12.30M | - | - | - | - | - | - | 1 |"
    )
    png = (out / "ap_vs_iou.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_seeds_give_mean_and_sample_std(tmp_path):
    """Three seeds with AP 40, 44, 48: mean 44, sample std 4 (sqrt((16 + 0 + 16) / 2))."""
    compare = _load_compare()
    base = tmp_path / "run"
    for seed, ap in [(1, 40.0), (2, 44.0), (3, 48.0)]:
        _write_results(base / f"seed{seed}", dict(BBOX, AP=ap), train_s=0.1 * seed)
    out = tmp_path / "cmp"
    compare.main(
        [
            str(CONFIG),
            "--out",
            str(out),
            "--seeds",
            "1",
            "2",
            "3",
            "--opts",
            "OUTPUT_DIR",
            str(base),
        ],
        root=ROOT,
    )

    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["num_seeds"] == 3
    assert row["AP"] == 44.0 and abs(row["AP_std"] - 4.0) < 1e-9
    assert row["AP50"] == 70.0 and row["AP50_std"] == 0.0
    assert abs(row["train_s_per_iter"] - 0.2) < 1e-9
    assert [r["AP"] for r in row["runs"]] == [40.0, 44.0, 48.0]
    table = (out / "results.md").read_text()
    assert f"| {CONFIG.stem} | 44.0 ± 4.0 | 70.0 ± 0.0 |" in table
    assert f"| {CONFIG.stem} (seed 3) | 48.0 | 70.0 |" in table


def test_paired_differences_by_seed(tmp_path):
    """B - A per seed: (43 - 40, 45 - 44, 51 - 48) = (3, 1, 3): mean 7/3; deviations (2/3, -4/3,
    2/3), squares summing to 24/9, so the sample std is sqrt(24/9 / 2) = sqrt(4/3)."""
    config_b = ROOT / "configs" / "shapes" / "retinanet_R18_FPN_scratch.yaml"
    for name, aps in [("a", [40.0, 44.0, 48.0]), ("b", [43.0, 45.0, 51.0])]:
        for seed, ap in zip([1, 2, 3], aps):
            _write_results(tmp_path / name / f"seed{seed}", dict(BBOX, AP=ap))
    rows_a = [
        summarize("a", read_payload(r))
        for r in runs_of(CONFIG, ["OUTPUT_DIR", str(tmp_path / "a")], [1, 2, 3], ROOT)
    ]
    rows_b = [
        summarize("b", read_payload(r))
        for r in runs_of(config_b, ["OUTPUT_DIR", str(tmp_path / "b")], [1, 2, 3], ROOT)
    ]
    row_a, row_b = aggregate("a", rows_a), aggregate("b", rows_b)
    diff = paired_differences(row_a, row_b)
    assert diff["name"] == "b - a"
    assert abs(diff["AP"] - 7 / 3) < 1e-9
    assert abs(diff["AP_std"] - (4 / 3) ** 0.5) < 1e-9
    assert diff["AP50"] == 0.0


def test_a_row_with_two_baselines_gets_one_difference_row_for_each(tmp_path):
    """Row C has `baseline: [A, B]`. Per seed, C - A = (44 - 40, 47 - 44, 50 - 48) = (4, 3, 2):
    mean 3, sample std 1; C - B = (44 - 43, 47 - 45, 50 - 51) = (1, 2, -1): mean 2/3,
    deviations (1/3, 4/3, -5/3), squares summing to 42/9, sample std sqrt(7/3) = 1.53."""
    compare = _load_compare()
    aps = {"A": [40.0, 44.0, 48.0], "B": [43.0, 45.0, 51.0], "C": [44.0, 47.0, 50.0]}
    runs = []
    for label, values in aps.items():
        for seed, ap in zip([1, 2, 3], values):
            _write_results(tmp_path / label / f"seed{seed}", dict(BBOX, AP=ap))
        runs.append(
            {"config": str(CONFIG), "label": label, "opts": ["OUTPUT_DIR", str(tmp_path / label)]}
        )
    runs[1]["baseline"] = "A"
    runs[2]["baseline"] = ["A", "B"]
    suite = tmp_path / "two_baselines.yaml"
    suite.write_text(json.dumps({"name": "two_baselines", "seeds": [1, 2, 3], "runs": runs}))
    out = tmp_path / "cmp"
    assert compare.main(["--suite", str(suite), "--out", str(out)], root=ROOT) == 0

    payload = json.loads((out / "results.json").read_text())
    assert [r["baselines"] for r in payload["rows"]] == [[], ["A"], ["A", "B"]]
    diffs = {d["name"]: d for d in payload["differences"]}
    assert list(diffs) == ["B - A", "C - A", "C - B"]
    assert diffs["C - A"]["AP"] == pytest.approx(3.0) and diffs["C - A"]["AP_std"] == 1.0
    assert diffs["C - B"]["AP"] == pytest.approx(2 / 3)
    assert diffs["C - B"]["AP_std"] == pytest.approx((7 / 3) ** 0.5)
    lines = (out / "results.md").read_text().split("\n\n")[0].splitlines()
    first_cells = [line.split("|")[1].strip() for line in lines[2:]]
    assert first_cells == ["A", "B", "Δ vs A", "C", "Δ vs A", "Δ vs B"]
    assert lines[-2].startswith("| Δ vs A | +3.0 ± 1.0 | +0.0 ± 0.0 |")
    assert lines[-1].startswith("| Δ vs B | +0.7 ± 1.5 |")


def test_seed_runs_override_seed_and_output_dir(tmp_path):
    (run,) = runs_of(CONFIG, ["OUTPUT_DIR", str(tmp_path)], [7], ROOT)
    assert run.out_dir == tmp_path / "seed7"
    assert list(run.opts[-4:]) == ["SEED", "7", "OUTPUT_DIR", str(tmp_path / "seed7")]
    (plain,) = runs_of(CONFIG, ["OUTPUT_DIR", str(tmp_path)], [], ROOT)
    assert plain.out_dir == tmp_path and plain.seed is None


def test_progress_line_reads_detectron2_metrics(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("[11/22 04:10:21 d2.utils.events]:  eta: 0:02:01  iter: 879  total_loss: 0.9\n")
    assert last_progress(log) == "iter 879 eta 0:02:01"
    assert last_progress(tmp_path / "missing.txt") == "starting"


# --- end to end: tools/compare.py trains two tiny configs, then reuses them -------------------

RETINA = ROOT / "configs" / "shapes" / "retinanet_R18_FPN_scratch.yaml"
TINY = ["--quick", "--jobs", "2", "--poll", "1", "--opts", "SOLVER.MAX_ITER", "6"]


def _compare_command(out: Path, data: Path):
    """tools/compare.py as a user runs it: a separate process, the tiny quick data in `data`."""
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "compare.py"),
        str(CONFIG),
        str(RETINA),
        "--out",
        str(out),
    ] + TINY
    env = dict(os.environ, D2ALIGN_DATASETS=str(data))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_e2e")
    first = _compare_command(root / "cmp", root / "data")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return root, first


def _table_rows(md: str):
    """{first cell: [cells]} of the first markdown table of results.md."""
    rows = {}
    for line in md.split("\n\n")[0].splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_compare_trains_two_configs_and_writes_table_json_and_figures(trained):
    root, first = trained
    out = root / "cmp"
    assert first.stdout.count("training (pid") == 2  # both trained, by train_net.py processes
    assert "overall ETA" in first.stdout  # progress lines while they ran
    payload = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in payload["rows"]}
    assert list(rows) == [CONFIG.stem, RETINA.stem]
    assert all(r["status"] == "ok" and r["runs"][0]["trained_now"] for r in rows.values())
    assert payload["quick"].startswith("QUICK smoke run: 6 iterations")
    faster = rows[CONFIG.stem]
    assert faster["num_parameters"] > 1e6 and faster["train_s_per_iter"] > 0
    assert sum(faster[k] for k in ("pos50", "pos60", "pos70", "pos80", "pos90")) >= 0
    for row in rows.values():  # the run's own final_results.json, unchanged
        run_dir = Path(row["runs"][0]["out_dir"])
        bbox = json.loads((run_dir / "final_results.json").read_text())["results"]["bbox"]
        assert row["AP"] == bbox["AP"] and row["AP75"] == bbox["AP75"]

    md = (out / "results.md").read_text()
    assert md.startswith("| config [QUICK] | AP | AP50 |") and "QUICK smoke run" in md
    table = _table_rows(md)
    keys = ["AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "APs", "APm", "APl"]
    for name, row in rows.items():  # the table shows the JSON's numbers
        cells = table[name]
        shown = ["-" if row[k] is None else f"{row[k]:.1f}" for k in keys]
        assert cells[: len(keys)] == shown
        assert cells[len(keys)] == f"{row['train_s_per_iter']:.3f}"
        assert cells[-1] == "1"  # one seed behind each number
    diff = payload["differences"][0]
    assert diff["name"] == f"{RETINA.stem} - {CONFIG.stem}"
    assert table[f"Δ vs {CONFIG.stem}"][0] == f"{rows[RETINA.stem]['AP'] - faster['AP']:+.1f}"

    figures = [
        out / "ap_vs_iou.png",
        out / "positives_by_iou.png",
        out / "diagnostics" / f"{CONFIG.stem}.png",
    ]
    for png in figures:
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


@pytest.mark.slow
def test_second_call_trains_nothing(trained):
    root, _ = trained
    out = root / "cmp"
    results = [
        Path(r["runs"][0]["out_dir"]) / "final_results.json"
        for r in json.loads((out / "results.json").read_text())["rows"]
    ]
    stamps = [p.stat().st_mtime_ns for p in results]
    second = _compare_command(out, root / "data")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "training (pid" not in second.stdout and "resuming" not in second.stdout
    assert [p.stat().st_mtime_ns for p in results] == stamps
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert not any(r["runs"][0]["trained_now"] for r in rows)
    assert "0 run(s) trained or evaluated now, 2 reused" in (out / "results.md").read_text()
