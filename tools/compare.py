#!/usr/bin/env python
"""Side-by-side comparison of configs: one table and one plot of AP against IoU threshold.

For each config, reads `<OUTPUT_DIR>/final_results.json`, training the config first when that
file is missing (or with --retrain); `--jobs N` trains N configs at once (on a CPU, several
single-threaded runs use the cores better than one multi-threaded run). A config under
`projects/<Name>/configs/` is trained with that project's `train_net.py`; any other with
`tools/train_net.py`.

    python tools/compare.py configs/shapes/*.yaml --out output/shapes/comparison \
        [--seeds 42 1 7] [--opts SOLVER.MAX_ITER 100]

With `--seeds`, every config is trained once per seed (`SEED s`, into `<OUTPUT_DIR>/seed<s>`) and
the table gives the mean and the sample standard deviation over the seeds: short from-scratch
schedules vary by several AP points from one seed to the next, so one seed cannot rank methods
that differ by less.

Writes `<out>/results.md` (markdown table, plus one row per seed), `<out>/results.json` and
`<out>/ap_vs_iou.png` (mean AP against IoU threshold, with the standard deviation as error bars).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, NamedTuple, Optional

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


class Run(NamedTuple):
    """One training of one config: `opts` are the overrides it runs with."""

    config: Path
    seed: Optional[int]
    opts: List[str]
    out_dir: Path

    @property
    def name(self) -> str:
        return self.config.stem if self.seed is None else f"{self.config.stem} (seed {self.seed})"


def runs_of(config: Path, opts, seeds) -> List[Run]:
    """The runs of `config`: one with its own SEED and OUTPUT_DIR when `seeds` is empty, else one
    per seed in `<OUTPUT_DIR>/seed<s>`."""
    out_dir = output_dir_of(config, opts)
    if not seeds:
        return [Run(config, None, list(opts), out_dir)]
    runs = []
    for seed in seeds:
        seed_dir = out_dir / f"seed{seed}"
        runs.append(Run(config, seed, list(opts) + ["SEED", str(seed), "OUTPUT_DIR", str(seed_dir)],
                        seed_dir))
    return runs


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


def train_runs(runs: List[Run], jobs: int, poll_s: float = 30.0) -> None:
    """Train `runs`, `jobs` at a time, each with cores // jobs threads.

    Each run's output goes to `<out_dir>/train_log.txt`; one progress line per `poll_s`
    seconds shows every running config's iteration and ETA.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, running = list(runs), {}
    while pending or running:
        while pending and len(running) < jobs:
            run = pending.pop(0)
            run.out_dir.mkdir(parents=True, exist_ok=True)
            log = run.out_dir / "train_log.txt"
            cmd = [sys.executable, str(train_script_for(run.config)), "--config-file",
                   str(run.config)] + run.opts
            print(f"[compare] training {run.name} -> {run.out_dir} (log: {log})", flush=True)
            with open(log, "w") as f:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
            running[run] = (proc, log, time.time())
        time.sleep(min(poll_s, 1.0) if not running else poll_s)
        status = []
        for run, (proc, log, start) in list(running.items()):
            if proc.poll() is None:
                status.append(f"{run.name}: {_last_progress(log)}")
                continue
            del running[run]
            if proc.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise SystemExit(f"[compare] {run.name} failed (exit {proc.returncode}):\n{tail}")
            print(f"[compare] {run.name}: done in {time.time() - start:.0f} s", flush=True)
        if status:
            print("[compare] " + " | ".join(status), flush=True)


def read_results(run: Run) -> dict:
    with open(run.out_dir / "final_results.json") as f:
        return json.load(f)


SPEED_COLUMNS = ["train_s_per_iter", "inference_s_per_image"]


def summarize(name: str, payload: dict) -> dict:
    bbox = payload["results"].get("bbox", {})
    row = {"name": name}
    row.update({k: bbox.get(k, float("nan")) for k in AP_COLUMNS})
    row.update({k: payload["speed"].get(k, float("nan")) for k in SPEED_COLUMNS})
    return row


def aggregate(name: str, rows: List[dict]) -> dict:
    """Mean of each column over the seeds' rows, with its sample standard deviation under
    `<column>_std` (0 for a single row) and the seeds' rows under `runs`."""
    out = {"name": name, "num_seeds": len(rows), "runs": rows}
    for k in AP_COLUMNS + SPEED_COLUMNS:
        values = [r[k] for r in rows]
        out[k] = statistics.fmean(values)
        out[k + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def paired_differences(reference: dict, row: dict) -> dict:
    """Mean and sample std over seeds of `row` minus `reference`, seed by seed (both aggregated
    rows of the same seeds, in the same order): a run and its reference share the seed, hence
    the initialisation and the order of the data, so that these differences vary less than the
    rows themselves."""
    out = {"name": f"{row['name']} - {reference['name']}", "num_seeds": row["num_seeds"]}
    for k in AP_COLUMNS + SPEED_COLUMNS:
        diffs = [r[k] - ref[k] for r, ref in zip(row["runs"], reference["runs"])]
        out[k] = statistics.fmean(diffs)
        out[k + "_std"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return out


def markdown_table(rows, with_std: bool = False) -> str:
    cols = AP_COLUMNS + ["train s/iter", "inf s/img"]
    lines = ["| config | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        if with_std:
            vals = [f"{r[k]:.1f} ± {r[k + '_std']:.1f}" for k in AP_COLUMNS]
        else:
            vals = [f"{r[k]:.1f}" for k in AP_COLUMNS]
        vals += [f"{r[k]:.3f}" for k in SPEED_COLUMNS]
        lines.append(f"| {r['name']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot_ap_vs_iou(rows, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.errorbar([t for _, t in IOU_COLUMNS], [r[k] for k, _ in IOU_COLUMNS],
                    yerr=[r.get(k + "_std", 0.0) for k, _ in IOU_COLUMNS], marker="o",
                    capsize=3, label=r["name"])
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[],
                        help="train every config once per seed; report mean ± std")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE overrides applied to every config (last argument)")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must not repeat a seed, got {args.seeds}")

    runs = {c: runs_of(c, args.opts, args.seeds) for c in args.configs}
    todo = [
        r for c in args.configs for r in runs[c]
        if args.retrain or not (r.out_dir / "final_results.json").exists()
    ]
    train_runs(todo, max(1, args.jobs))
    rows = [
        aggregate(c.stem, [summarize(r.name, read_results(r)) for r in runs[c]])
        for c in args.configs
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, with_std=bool(args.seeds))
    if args.seeds:
        per_seed = [r for row in rows for r in row["runs"]]
        table += f"\n\nMean ± sample std over seeds {args.seeds}. Per seed:\n\n"
        table += markdown_table(per_seed)
        if len(rows) > 1 and len(args.seeds) > 1:
            diffs = [paired_differences(rows[0], r) for r in rows[1:]]
            table += "\n\nDifferences to the first config, paired by seed (mean ± std):\n\n"
            table += markdown_table(diffs, with_std=True)
            for row, diff in zip(rows[1:], diffs):
                row["paired_difference_to_first"] = diff
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    plot_ap_vs_iou(rows, args.out / "ap_vs_iou.png")
    print(table)
    print(f"[compare] table, json and AP-vs-IoU plot in {args.out}")


if __name__ == "__main__":
    main()
