#!/usr/bin/env python
"""Side-by-side comparison of configs: one table and one plot of AP against IoU threshold.

For each config, reads `<OUTPUT_DIR>/final_results.json`, training the config first when that
file is missing (or with --retrain); `--jobs N` trains N configs at once (on a CPU, several
single-threaded runs use the cores better than one multi-threaded run). A config under `projects/<Name>/configs/` is trained with
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
    from d2align.projects import config_hooks_for

    return Path(build_config(str(config), opts, config_hooks_for(str(config))).OUTPUT_DIR)


def _last_progress(log: Path) -> str:
    """Iteration and ETA of the last metrics line in `log`, e.g. "iter 339 eta 0:05:10"."""
    if not log.exists():
        return "starting"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if " iter: " in ln]
    if not lines:
        return "evaluating" if "Start inference" in log.read_text(errors="replace") else "starting"
    words = lines[-1].split()
    eta = words[words.index("eta:") + 1] if "eta:" in words else "?"
    return f"iter {words[words.index('iter:') + 1]} eta {eta}"


def train_configs(configs, opts, jobs: int, poll_s: float = 30.0) -> None:
    """Train `configs` (each a Path), `jobs` at a time, each with cores // jobs threads.

    Each run's output goes to `<OUTPUT_DIR>/train_log.txt`; one progress line per `poll_s`
    seconds shows every running config's iteration and ETA.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, running = list(configs), {}
    while pending or running:
        while pending and len(running) < jobs:
            config = pending.pop(0)
            out_dir = output_dir_of(config, opts)
            out_dir.mkdir(parents=True, exist_ok=True)
            log = out_dir / "train_log.txt"
            cmd = [sys.executable, str(train_script_for(config)), "--config-file", str(config)]
            print(f"[compare] training {config} -> {out_dir} (log: {log})", flush=True)
            with open(log, "w") as f:
                proc = subprocess.Popen(cmd + list(opts), cwd=ROOT, env=env, stdout=f,
                                        stderr=subprocess.STDOUT)
            running[config] = (proc, log, time.time())
        time.sleep(min(poll_s, 1.0) if not running else poll_s)
        status = []
        for config, (proc, log, start) in list(running.items()):
            if proc.poll() is None:
                status.append(f"{config.stem}: {_last_progress(log)}")
                continue
            del running[config]
            if proc.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise SystemExit(f"[compare] {config} failed (exit {proc.returncode}):\n{tail}")
            print(f"[compare] {config.stem}: done in {time.time() - start:.0f} s", flush=True)
        if status:
            print("[compare] " + " | ".join(status), flush=True)


def read_results(config: Path, opts) -> dict:
    with open(output_dir_of(config, opts) / "final_results.json") as f:
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
    parser.add_argument("--jobs", type=int, default=1,
                        help="configs trained at once, each with (CPU cores // jobs) threads")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE overrides applied to every config (last argument)")
    args = parser.parse_args(argv)
    opts = args.opts

    todo = [
        c for c in args.configs
        if args.retrain or not (output_dir_of(c, opts) / "final_results.json").exists()
    ]
    train_configs(todo, opts, max(1, args.jobs))
    rows = [summarize(c.stem, read_results(c, opts)) for c in args.configs]
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    plot_ap_vs_iou(rows, args.out / "ap_vs_iou.png")
    print(table)
    print(f"[compare] table, json and AP-vs-IoU plot in {args.out}")


if __name__ == "__main__":
    main()
