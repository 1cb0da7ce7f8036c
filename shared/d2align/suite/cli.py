"""The command line of `tools/compare.py`: train what a suite still needs, then one table.

    python tools/compare.py --suite headline                  # configs/suites/headline.yaml
    python tools/compare.py configs/shapes/*.yaml --out DIR   # a plain list of configs
        [--seeds 42 1 7] [--jobs N] [--quick] [--retrain] [--opts KEY VALUE ...]

Writes `<out>/results.md` (the table and its notes), `<out>/results.json`, `<out>/ap_vs_iou.png`,
`<out>/positives_by_iou.png` and one score-vs-IoU figure per run in `<out>/diagnostics/`.
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..lock import DirLock, LockHeld
from .progress import format_seconds
from .quick import quick_label, quick_opts
from .report import (
    aggregate,
    copy_figures,
    markdown_table,
    paired_differences,
    plot_ap_vs_iou,
    plot_positives,
    summarize,
    write_json,
)
from .runner import Outcome, SuiteStopped, execute
from .runs import Run, plan_runs
from .spec import Suite, load_suite, suite_of_configs
from .summary import read_payload, run_summary

__all__ = ["main", "parse_args", "noise_note"]


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tools/compare.py",
        description="Train (what is missing) and compare configs side by side: one table, "
        "a JSON copy, the AP-vs-IoU plot and misalignment diagnostics.",
    )
    parser.add_argument("configs", nargs="*", type=Path, help="config files (or use --suite)")
    parser.add_argument("--suite", help="a suite name (configs/suites/<name>.yaml) or file")
    parser.add_argument("--out", type=Path, help="output folder (default: output/suites/<name>)")
    parser.add_argument("--retrain", action="store_true", help="train even if results exist")
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs at once, each with (CPU cores // jobs) threads "
        "(default: the suite's, 1 for a list of configs)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train every run once per seed; report mean ± std "
        "(default: the suite's seeds, else each config's SEED)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of the whole suite in minutes (small data, 20 iterations), labelled "
        "as such; its runs go to <out>/runs",
    )
    parser.add_argument(
        "--poll", type=_positive_seconds, default=30.0, help="seconds between progress lines"
    )
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: processes on this machine (--jobs at a time); slurm: one SLURM job per "
        "run through submitit (the suite file's `launcher:` section and the --slurm-* options)",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="(slurm) submit what is needed and return; the same command later follows the "
        "jobs still running and writes the table",
    )
    slurm = parser.add_argument_group("SLURM (with --launcher slurm; over the suite's launcher:)")
    slurm.add_argument("--slurm-partition", help="partition of the jobs")
    slurm.add_argument("--slurm-time", type=int, metavar="MIN", help="time limit of a job")
    slurm.add_argument(
        "--slurm-gpus-per-run", type=int, metavar="N", help="GPUs on each node (--num-gpus)"
    )
    slurm.add_argument("--slurm-cpus-per-run", type=int, metavar="N", help="CPUs of each task")
    slurm.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory of each node")
    slurm.add_argument("--slurm-nodes-per-run", type=int, metavar="N", help="nodes of one training")
    slurm.add_argument(
        "--slurm-tasks-per-node",
        type=int,
        metavar="N",
        help="machines of one training on each node (default 1)",
    )
    slurm.add_argument(
        "--slurm-sbatch",
        action="append",
        metavar="FLAG",
        help="an extra sbatch flag, e.g. --slurm-sbatch=--account=vision (repeatable)",
    )
    slurm.add_argument("--slurm-log-dir", type=Path, help="submitit's folder (default <out>/slurm)")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE overrides applied to every run (last argument)",
    )
    args = parser.parse_args(argv)
    if bool(args.configs) == bool(args.suite):
        parser.error("give either config files or --suite NAME")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must not repeat a seed, got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    given = [k for k, v in vars(args).items() if k.startswith("slurm_") and v is not None]
    if args.launcher != "slurm" and (given or args.detach):
        shown = ", ".join("--" + k.replace("_", "-") for k in given + ["detach"] * args.detach)
        parser.error(f"{shown} only apply with --launcher slurm")
    return args


def slurm_options(args: argparse.Namespace, suite: Suite, out: Path):
    """The suite file's `launcher:` settings with the --slurm-* options over them, and
    submitit's folder."""
    from .slurm_options import SlurmOptions

    try:
        options = (suite.launcher or SlurmOptions()).with_overrides(
            partition=args.slurm_partition,
            time_min=args.slurm_time,
            gpus_per_run=args.slurm_gpus_per_run,
            cpus_per_run=args.slurm_cpus_per_run,
            mem_gb=args.slurm_mem_gb,
            nodes_per_run=args.slurm_nodes_per_run,
            tasks_per_node=args.slurm_tasks_per_node,
            sbatch=tuple(args.slurm_sbatch) if args.slurm_sbatch else None,
            log_dir=args.slurm_log_dir,
        )
    except ValueError as e:
        raise SystemExit(f"[suite] {e}")
    folder = options.log_dir or out / "slurm"
    return options, folder if folder.is_absolute() else Path.cwd() / folder


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPU cores ({model}), {platform.system()}"


def noise_note(suite: Suite, seeds: Sequence[int]) -> str:
    """How many seeds stand behind each number, and with one seed, what is noise."""
    if len(seeds) > 1:
        return (
            f"Each number: mean ± sample std over seeds {list(seeds)} (the 'seeds' column counts "
            "the runs that succeeded); Δ rows: differences to the row's baselines, paired by seed."
        )
    which = f"seed {seeds[0]}" if seeds else "each config's own SEED"
    note = (
        f"Each number comes from ONE training ({which}). Differences smaller than the "
        "seed-to-seed spread are noise"
    )
    if not suite.seed_spread:
        return note + "; measure that spread with --seeds."
    measured = []
    for s in suite.seed_spread:
        values = ", ".join(f"{v:.1f}" for v in s.ap)
        seeds_text = ", ".join(str(x) for x in s.seeds)
        std = statistics.stdev(s.ap)
        measured.append(
            f"{s.label}: AP {values} with seeds {seeds_text} (std {std:.1f}; {s.source})"
        )
    return note + ". Measured spread of AP over seeds: " + "; ".join(measured) + "."


def _rows(suite: Suite, planned: Dict[str, List[Run]], outcomes: Dict[str, Outcome]) -> List[dict]:
    """One aggregated row per suite entry, with its per-seed rows under "runs"."""
    per_run: Dict[str, dict] = {}
    for runs in planned.values():
        for run in runs:
            outcome = outcomes[run.name]
            ok = outcome.ok
            row = summarize(
                run.name, read_payload(run) if ok else None, run_summary(run) if ok else None
            )
            row.update(
                status="ok" if ok else outcome.status,
                seed=run.seed,
                out_dir=str(run.out_dir),
                trained_now=outcome.status == "done",
            )
            if outcome.resumed_from:
                row["resumed_from"] = outcome.resumed_from
            if not ok:
                row.update(
                    returncode=outcome.returncode,
                    reason=outcome.reason,
                    log=str(run.log_file),
                    log_tail=outcome.log_tail,
                )
            per_run[run.name] = row
    for runs in planned.values():
        for run in runs:  # an evaluation's model was trained by the run it evaluates
            row, source = per_run[run.name], per_run.get(run.weights_from or "")
            if source is not None and row["train_s_per_iter"] is None:
                row["train_s_per_iter"] = source["train_s_per_iter"]
    rows = []
    for entry in suite.runs:
        row = aggregate(entry.label, [per_run[r.name] for r in planned[entry.label]])
        row.update(
            config=str(entry.config),
            baselines=list(entry.baselines),
            weights_from=entry.weights_from,
        )
        rows.append(row)
    return rows


def _failures(rows: List[dict]) -> str:
    lines = []
    for row in rows:
        for r in row["runs"]:
            if r["status"] == "ok":
                continue
            lines.append(f"- {r['name']}: {r['status']} ({r.get('reason') or '-'}), log {r['log']}")
            tail = [ln for ln in (r.get("log_tail") or "").splitlines() if ln.strip()][-5:]
            lines += ["      " + ln for ln in tail]
    return ("Failed runs:\n\n" + "\n".join(lines)) if lines else ""


LEGEND = (
    "params: trainable parameters. r(score, IoU): Pearson r between the score and the IoU with "
    "the ground truth of the final detections with IoU > 0.5 (IoU-Net Fig. 2a). pos50 ... "
    "pos90: ground truths with a final detection (after NMS) of IoU in [0.5, 0.6), ..., "
    "[0.9, 1] (IoU-Net Fig. 3). A row evaluating another row's model (weights_from) shows "
    "that training's train s/iter. Δ rows: the row minus its baseline (the method it modifies, "
    "then any other row it is compared with); "
    "speeds and parameters as ratios. Timings are per process while the suite's runs share "
    "the machine."
)


def report(suite, planned, outcomes, seeds, out: Path, quick: str, wall_s: float) -> str:
    """Write results.md / results.json / figures into `out`; returns the text printed."""
    rows = _rows(suite, planned, outcomes)
    by_name = {r["name"]: r for r in rows}
    differences = {
        r["name"]: [paired_differences(by_name[b], r) for b in r["baselines"]] for r in rows
    }
    with_std = len(seeds) > 1
    first = "config [QUICK]" if quick else "config"
    parts = [markdown_table(rows, with_std, differences, first_header=first)]
    if quick:
        parts.append(quick)
    parts.append(noise_note(suite, seeds))
    parts.append(LEGEND)
    if with_std:
        per_seed = [r for row in rows for r in row["runs"]]
        parts.append(
            "Per seed:\n\n" + markdown_table(per_seed, seeds_column=False, first_header=first)
        )
    failures = _failures(rows)
    if failures:
        parts.append(failures)
    trained = sum(o.status == "done" for o in outcomes.values())
    reused = sum(o.status == "reused" for o in outcomes.values())
    machine = _machine()
    parts.append(
        f"Wall time of this command: {format_seconds(wall_s)} ({trained} run(s) trained or "
        f"evaluated now, {reused} reused) on {machine}."
    )
    text = "\n\n".join(parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    plot_ap_vs_iou(
        rows,
        out / "ap_vs_iou.png",
        f"{suite.name}: AP against IoU threshold" + (" (QUICK)" if quick else ""),
    )
    figures = {"ap_vs_iou": str(out / "ap_vs_iou.png")}
    if plot_positives(rows, out / "positives_by_iou.png"):
        figures["positives_by_iou"] = str(out / "positives_by_iou.png")
    run_figures = {}
    for label, runs in planned.items():
        for run in runs:
            if outcomes[run.name].ok:
                diag = run_summary(run).get("misalignment") or {}
                run_figures[run.name] = diag.get("figure")
    figures["score_vs_iou"] = copy_figures(run_figures, out / "diagnostics")
    write_json(
        {
            "suite": suite.name,
            "suite_file": suite.source,
            "description": suite.description,
            "quick": quick or None,
            "seeds": list(seeds),
            "rows": rows,
            "differences": [d for diffs in differences.values() for d in diffs],
            "noise_note": noise_note(suite, seeds),
            "wall_time_s": wall_s,
            "machine": machine,
            "figures": figures,
        },
        out / "results.json",
    )
    return text


def main(argv: Optional[Sequence[str]] = None, root: Optional[Path] = None) -> int:
    """Run the command line; returns the exit status (1 if a run failed)."""
    start = time.time()
    args = parse_args(argv)
    root = Path(root or Path.cwd()).resolve()
    try:
        suite = load_suite(args.suite, root) if args.suite else suite_of_configs(args.configs, root)
    except ValueError as e:
        raise SystemExit(f"[suite] {e}")
    seeds = tuple(args.seeds) if args.seeds is not None else suite.seeds
    jobs = args.jobs or suite.jobs
    default_out = root / "output" / ("suites" if args.suite else "") / suite.name
    out = args.out or (
        default_out.with_name(default_out.name + "_quick") if args.quick else default_out
    )
    out = out if out.is_absolute() else Path.cwd() / out
    if out.exists() and not out.is_dir():
        raise SystemExit(f"[suite] --out {out}: is a file, not a folder")
    lock = DirLock(out, "suite.lock", "suite")
    try:
        lock.acquire()
    except LockHeld as e:
        raise SystemExit(
            f"[suite] refusing to start: {e}. Wait for it, stop it, or pass another " "--out."
        )
    try:
        first = quick_opts() if args.quick else ()
        try:
            planned = plan_runs(
                suite, root, seeds, args.opts, first, runs_dir=out / "runs" if args.quick else None
            )
        except ValueError as e:
            raise SystemExit(f"[suite] {e}")
        runs = [r for label in planned for r in planned[label]]
        quick = quick_label([r.max_iter for r in runs]) if args.quick else ""
        header = f"[suite] {suite.name}: {len(runs)} run(s), {jobs} at a time -> {out}"
        made = []  # the scheduler, for what --detach left in flight
        factory = None  # local
        if args.launcher == "slurm":
            from .slurm import SlurmScheduler

            options, folder = slurm_options(args, suite, out)
            header = (
                f"[suite] {suite.name}: {len(runs)} run(s) as SLURM jobs -> {out} "
                f"(job logs: {folder})"
            )

            def factory(*a):  # noqa: F811
                made.append(SlurmScheduler(*a, options=options, folder=folder))
                return made[-1]

        print(header + (f"\n[suite] {quick}" if quick else ""), flush=True)
        try:
            outcomes = execute(
                runs,
                jobs,
                root,
                retrain=args.retrain,
                poll_s=args.poll,
                echo=lambda s: print(s, flush=True),
                scheduler=factory,
                detach=args.detach,
            )
        except ValueError as e:
            raise SystemExit(f"[suite] {e}")
        except (KeyboardInterrupt, SuiteStopped) as e:
            print(
                f"[suite] {e or 'interrupted'}: the trainings were terminated. Run the same "
                "command again to continue: finished runs are reused, started ones resume "
                "from their last checkpoint.",
                flush=True,
            )
            return 143 if isinstance(e, SuiteStopped) else 130
        if made and made[0].busy:  # --detach: jobs still in SLURM
            print(
                f"[suite] detached; SLURM jobs in flight:\n{made[0].describe_in_flight()}\n"
                "[suite] run the same command (without --detach) to wait for them and write "
                "the table; with --detach again it only reports.",
                flush=True,
            )
            return 0
        text = report(suite, planned, outcomes, seeds, out, quick, time.time() - start)
        print(text)
        print(f"[suite] table, JSON and figures in {out}", flush=True)
        return 0 if all(o.ok for o in outcomes.values()) else 1
    finally:
        lock.release()
