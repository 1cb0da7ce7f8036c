#!/usr/bin/env python
"""Side-by-side comparison of configs: one table and one plot of AP against IoU threshold.

For each config, reads `<OUTPUT_DIR>/final_results.json`, training the config first when that
file is missing (or with --retrain). A config under `projects/<Name>/configs/` is trained with
that project's `train_net.py`; any other with `tools/train_net.py`.

    python tools/compare.py configs/shapes/*.yaml --out output/shapes/comparison \
        [--opts SOLVER.MAX_ITER 100]

Writes `<out>/results.md` (markdown table), `<out>/results.json` and `<out>/ap_vs_iou.png`.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AP_COLUMNS = ["AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "APs", "APm", "APl"]
IOU_COLUMNS = [("AP50", 0.5), ("AP60", 0.6), ("AP70", 0.7), ("AP80", 0.8), ("AP90", 0.9)]


def train_script_for(config: Path) -> Path:
    parts = config.resolve().relative_to(ROOT).parts
    if len(parts) > 2 and parts[0] == "projects":
        return ROOT / "projects" / parts[1] / "train_net.py"
    return ROOT / "tools" / "train_net.py"


def output_dir_of(config: Path, opts) -> Path:
    from d2align.engine import build_config

    hooks = []
    script = train_script_for(config)
    if script.parent.name != "tools":  # a project's config needs its keys to merge
        hooks = _project_config_hooks(script.parent)
    cfg = build_config(str(config), opts, hooks)
    return Path(cfg.OUTPUT_DIR)


def _project_config_hooks(project_dir: Path):
    import importlib

    for pkg in project_dir.iterdir():
        if (pkg / "config.py").exists():
            module = importlib.import_module(f"d2align.projects.{pkg.name}")
            return [getattr(module, f"add_{pkg.name}_config")]
    return []


def run_config(config: Path, opts, retrain: bool) -> dict:
    out_dir = output_dir_of(config, opts)
    results_file = out_dir / "final_results.json"
    if retrain or not results_file.exists():
        cmd = [sys.executable, str(train_script_for(config)), "--config-file", str(config)]
        cmd += list(opts)
        print(f"[compare] training {config} -> {out_dir}", flush=True)
        start = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        print(f"[compare] {config.name}: {time.time() - start:.0f} s wall", flush=True)
    with open(results_file) as f:
        return json.load(f)


def summarize(name: str, payload: dict) -> dict:
    bbox = payload["results"].get("bbox", {})
    row = {"name": name}
    row.update({k: bbox.get(k, float("nan")) for k in AP_COLUMNS})
    row["train_s_per_iter"] = payload["speed"].get("train_s_per_iter", float("nan"))
    row["inference_s_per_image"] = payload["speed"].get("inference_s_per_image", float("nan"))
    return row


def markdown_table(rows) -> str:
    cols = AP_COLUMNS + ["train s/iter", "inf s/img"]
    lines = ["| config | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        vals = [f"{r[k]:.1f}" for k in AP_COLUMNS]
        vals += [f"{r['train_s_per_iter']:.3f}", f"{r['inference_s_per_image']:.3f}"]
        lines.append(f"| {r['name']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot_ap_vs_iou(rows, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot([t for _, t in IOU_COLUMNS], [r[k] for k, _ in IOU_COLUMNS], marker="o",
                label=r["name"])
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%)")
    ax.set_title("AP against IoU threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "output" / "comparison")
    parser.add_argument("--retrain", action="store_true", help="train even if results exist")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE overrides applied to every config (last argument)")
    args = parser.parse_args(argv)
    opts = args.opts

    rows = [summarize(c.stem, run_config(c, opts, args.retrain)) for c in args.configs]
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    plot_ap_vs_iou(rows, args.out / "ap_vs_iou.png")
    print(table)
    print(f"[compare] table, json and AP-vs-IoU plot in {args.out}")


if __name__ == "__main__":
    main()
