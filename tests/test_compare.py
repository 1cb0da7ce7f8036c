"""tools/compare.py: reads each config's final_results.json and writes the table and the plot."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_compare():
    spec = importlib.util.spec_from_file_location("d2align_compare", ROOT / "tools" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BBOX = {"AP": 40.0, "AP50": 70.0, "AP60": 60.0, "AP70": 50.0, "AP75": 45.0, "AP80": 30.0,
        "AP90": 5.0, "APs": 20.0, "APm": 45.0, "APl": 55.0}
CONFIG = ROOT / "configs" / "shapes" / "faster_rcnn_R18_FPN_scratch.yaml"


def _write_results(run_dir: Path, bbox: dict, train_s: float = 0.5) -> None:
    run_dir.mkdir(parents=True)
    payload = {"config_file": "x.yaml", "results": {"bbox": bbox},
               "speed": {"train_s_per_iter": train_s, "inference_s_per_image": 0.05}}
    (run_dir / "final_results.json").write_text(json.dumps(payload))


def test_table_and_plot_from_existing_results(tmp_path):
    compare = _load_compare()
    run_dir = tmp_path / "run"
    _write_results(run_dir, BBOX)
    out = tmp_path / "cmp"
    compare.main([str(CONFIG), "--out", str(out), "--opts", "OUTPUT_DIR", str(run_dir)])

    (row,) = json.loads((out / "results.json").read_text())
    assert row["name"] == CONFIG.stem and row["num_seeds"] == 1
    assert {k: row[k] for k in BBOX} == BBOX
    assert row["train_s_per_iter"] == 0.5 and row["inference_s_per_image"] == 0.05
    assert row["AP_std"] == 0.0
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| config | AP | AP50 | AP60 | AP70 | AP75 | AP80 | AP90")
    assert table[2] == (f"| {CONFIG.stem} | 40.0 | 70.0 | 60.0 | 50.0 | 45.0 | 30.0 | 5.0 | "
                        "20.0 | 45.0 | 55.0 | 0.500 | 0.050 |")
    png = (out / "ap_vs_iou.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_seeds_give_mean_and_sample_std(tmp_path):
    """Three seeds with AP 40, 44, 48: mean 44, sample std 4 (sqrt((16 + 0 + 16) / 2))."""
    compare = _load_compare()
    base = tmp_path / "run"
    for seed, ap in [(1, 40.0), (2, 44.0), (3, 48.0)]:
        _write_results(base / f"seed{seed}", dict(BBOX, AP=ap), train_s=0.1 * seed)
    out = tmp_path / "cmp"
    compare.main([str(CONFIG), "--out", str(out), "--seeds", "1", "2", "3",
                  "--opts", "OUTPUT_DIR", str(base)])

    (row,) = json.loads((out / "results.json").read_text())
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
    compare = _load_compare()
    config_b = ROOT / "configs" / "shapes" / "retinanet_R18_FPN_scratch.yaml"
    for name, aps in [("a", [40.0, 44.0, 48.0]), ("b", [43.0, 45.0, 51.0])]:
        for seed, ap in zip([1, 2, 3], aps):
            _write_results(tmp_path / name / f"seed{seed}", dict(BBOX, AP=ap))
    rows_a = [compare.summarize("a", compare.read_results(r)) for r in
              compare.runs_of(CONFIG, ["OUTPUT_DIR", str(tmp_path / "a")], [1, 2, 3])]
    rows_b = [compare.summarize("b", compare.read_results(r)) for r in
              compare.runs_of(config_b, ["OUTPUT_DIR", str(tmp_path / "b")], [1, 2, 3])]
    row_a, row_b = compare.aggregate("a", rows_a), compare.aggregate("b", rows_b)
    diff = compare.paired_differences(row_a, row_b)
    assert diff["name"] == "b - a"
    assert abs(diff["AP"] - 7 / 3) < 1e-9
    assert abs(diff["AP_std"] - (4 / 3) ** 0.5) < 1e-9
    assert diff["AP50"] == 0.0


def test_seed_runs_override_seed_and_output_dir(tmp_path):
    compare = _load_compare()
    (run,) = compare.runs_of(CONFIG, ["OUTPUT_DIR", str(tmp_path)], [7])
    assert run.out_dir == tmp_path / "seed7"
    assert run.opts[-4:] == ["SEED", "7", "OUTPUT_DIR", str(tmp_path / "seed7")]
    (plain,) = compare.runs_of(CONFIG, ["OUTPUT_DIR", str(tmp_path)], [])
    assert plain.out_dir == tmp_path and plain.seed is None


def test_progress_line_reads_detectron2_metrics(tmp_path):
    compare = _load_compare()
    log = tmp_path / "log.txt"
    log.write_text("[11/22 04:10:21 d2.utils.events]:  eta: 0:02:01  iter: 879  total_loss: 0.9\n")
    assert compare._last_progress(log) == "iter 879 eta 0:02:01"
    assert compare._last_progress(tmp_path / "missing.txt") == "starting"
