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


def test_table_and_plot_from_existing_results(tmp_path):
    compare = _load_compare()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bbox = {"AP": 40.0, "AP50": 70.0, "AP60": 60.0, "AP70": 50.0, "AP75": 45.0, "AP80": 30.0,
            "AP90": 5.0, "APs": 20.0, "APm": 45.0, "APl": 55.0}
    payload = {"config_file": "x.yaml", "results": {"bbox": bbox},
               "speed": {"train_s_per_iter": 0.5, "inference_s_per_image": 0.05}}
    (run_dir / "final_results.json").write_text(json.dumps(payload))
    out = tmp_path / "cmp"
    config = ROOT / "configs" / "shapes" / "faster_rcnn_R18_FPN_scratch.yaml"
    compare.main([str(config), "--out", str(out), "--opts", "OUTPUT_DIR", str(run_dir)])

    rows = json.loads((out / "results.json").read_text())
    assert rows == [dict(name=config.stem, train_s_per_iter=0.5, inference_s_per_image=0.05,
                         **bbox)]
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| config | AP | AP50 | AP60 | AP70 | AP75 | AP80 | AP90")
    assert table[2] == (f"| {config.stem} | 40.0 | 70.0 | 60.0 | 50.0 | 45.0 | 30.0 | 5.0 | "
                        "20.0 | 45.0 | 55.0 | 0.500 | 0.050 |")
    png = (out / "ap_vs_iou.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_progress_line_reads_detectron2_metrics(tmp_path):
    compare = _load_compare()
    log = tmp_path / "log.txt"
    log.write_text("[11/22 04:10:21 d2.utils.events]:  eta: 0:02:01  iter: 879  total_loss: 0.9\n")
    assert compare._last_progress(log) == "iter 879 eta 0:02:01"
    assert compare._last_progress(tmp_path / "missing.txt") == "starting"
