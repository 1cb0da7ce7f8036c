"""One script that settles what only a GPU can: run it first whenever a CUDA machine is at hand.

    bash scripts/gpu_check.sh [--out output/gpu_check] [--parts build tests train ...]

Parts, in order, each timed, all output in one log (`<out>/gpu_check.log`) and a summary
(`<out>/summary.json`):

    build        rebuild d2align with its CUDA kernels (FORCE_CUDA=1), then check that
                 `d2align._C` reports CUDA (`d2align.ops.compiled_with_cuda`)
    tests        the CUDA tests: PrRoIPool and IoU-guided NMS CUDA == CPU == reference, every
                 headline config under float16 autocast on CUDA, the CUDA model tests
    train        every headline row for `--iters` iterations on the GPU (the quick data), with
                 SOLVER.AMP.ENABLED on and off, each evaluated (COCOEvaluator)
    diagnostics  IoU-Net's Fig. 2/3 and CPM R-CNN's stage diagnostics on the GPU models
    bench        bench_prroi_pool.py and bench_nms.py on CUDA (ratios against torchvision's
                 roi_align / batched_nms at the papers' sizes)

It is meant to finish in 8 minutes on one H100 (`--budget-min`; a part that would start past
the budget is skipped and reported). Without a CUDA device it says so and exits 0 (1 with
`--require-gpu`): nothing here can be checked on the CPU.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("build", "tests", "train", "diagnostics", "bench")
CUDA_TESTS = [
    "tests/test_prroi_pool.py",
    "tests/test_nms.py",
    "tests/test_autocast.py",
    "tests/test_poolers.py",
]
sys.path.insert(0, str(ROOT / "shared"))  # d2align, also before it is installed
from d2align.suite.runs import slug  # noqa: E402

Step = Tuple[str, str, List[str], dict]  # (part, label, argv, extra environment)


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output/gpu_check", help="log and summary folder")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--iters", type=int, default=50, help="training iterations per row")
    parser.add_argument("--budget-min", type=float, default=8.0, help="time budget, minutes")
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 without CUDA")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    if not args.budget_min > 0:
        parser.error(f"--budget-min must be > 0, got {args.budget_min}")
    return args


def plan(args: argparse.Namespace, python: str = sys.executable) -> List[Step]:
    """The steps of the selected parts, in order."""
    out = Path(args.out)
    steps: List[Step] = []
    if "build" in args.parts:
        steps.append(
            ("build", "pip install -e . (FORCE_CUDA=1)",
             [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
             {"FORCE_CUDA": "1"})
        )  # fmt: skip
        steps.append(
            ("build", "d2align._C has CUDA kernels",
             [python, "-c", "import d2align.ops as o, sys; sys.exit(0 if o.compiled_with_cuda() "
              "else 'd2align._C was built without CUDA')"], {})
        )  # fmt: skip
    if "tests" in args.parts:
        steps.append(
            ("tests", "pytest (CUDA)",
             [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS,
              "-k", "cuda"], {})
        )  # fmt: skip
    runs = out / "suites"
    for amp in ("False", "True") if "train" in args.parts else ():
        steps.append(
            ("train", f"headline, {args.iters} iterations on CUDA, AMP {amp}",
             [python, "tools/compare.py", "--suite", "headline", "--quick", "--retrain",
              "--jobs", "1", "--out", str(runs / f"headline_amp_{amp.lower()}"),
              "--opts", "MODEL.DEVICE", "cuda", "SOLVER.MAX_ITER", str(args.iters),
              "SOLVER.AMP.ENABLED", amp], {})
        )  # fmt: skip
    if "diagnostics" in args.parts:
        trained = runs / "headline_amp_true" / "runs"
        steps.append(
            ("diagnostics", "IoU-Net Fig. 2/3 on CUDA",
             [python, "projects/IoUNet/diagnose.py", "--config-file",
              "projects/IoUNet/configs/shapes/iounet_R18_FPN_scratch.yaml",
              "--weights", str(trained / slug("IoU-Net (standard NMS)") / "model_final.pth"),
              "--out", str(out / "iou_net_diagnostics"), "--max-images", "20",
              "MODEL.DEVICE", "cuda"], {})
        )  # fmt: skip
        steps.append(
            ("diagnostics", "CPM R-CNN stages on CUDA",
             [python, "projects/CPMRCNN/stage_diagnostics.py", "--config-file",
              "projects/CPMRCNN/configs/shapes/cpm_rcnn_R18_FPN_scratch.yaml",
              "--weights",
              str(trained / slug("CPM R-CNN (3 stages + ISM + RSM)") / "model_final.pth"),
              "--out", str(out / "cpm_rcnn_stages"), "--max-images", "20",
              "MODEL.DEVICE", "cuda"], {})
        )  # fmt: skip
    if "bench" in args.parts:
        steps.append(
            ("bench", "PrRoIPool vs roi_align (CUDA)",
             [python, "benchmarks/bench_prroi_pool.py", "--device", "cuda"], {})
        )  # fmt: skip
        steps.append(
            ("bench", "NMS family vs batched_nms (CUDA)",
             [python, "benchmarks/bench_nms.py", "--device", "cuda"], {})
        )  # fmt: skip
    return steps


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_steps(steps: List[Step], out: Path, budget_s: float) -> List[dict]:
    """Runs the steps in order, output appended to `out`/gpu_check.log; a step that would
    start after `budget_s` is skipped. Returns one record per step."""
    out.mkdir(parents=True, exist_ok=True)
    records, start = [], time.time()
    with open(out / "gpu_check.log", "a") as log:
        for part, label, argv, extra in steps:
            elapsed = time.time() - start
            if elapsed > budget_s:
                records.append(dict(part=part, step=label, status="skipped (over budget)"))
                continue
            log.write(f"\n=== [{part}] {label}\n$ {' '.join(argv)}\n")
            log.flush()
            t0 = time.time()
            code = subprocess.call(
                argv, cwd=ROOT, env=dict(os.environ, **extra), stdout=log, stderr=subprocess.STDOUT
            )
            seconds = round(time.time() - t0, 1)
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            log.write(f"=== [{part}] {label}: {status} in {seconds} s\n")
            records.append(dict(part=part, step=label, status=status, seconds=seconds))
            print(f"[gpu_check] {part:12s} {label}: {status} in {seconds} s", flush=True)
    return records


def main(argv: Sequence[str] = None) -> int:
    args = parse_args(argv)
    steps = plan(args)
    if args.dry_run:
        for part, label, argv_, extra in steps:
            env = " ".join(f"{k}={v}" for k, v in extra.items())
            print(f"[{part}] {label}: {env + ' ' if env else ''}{' '.join(argv_)}")
        return 0
    if not cuda_available():
        print("[gpu_check] no CUDA device visible: nothing was checked (these parts need a GPU)")
        return 1 if args.require_gpu else 0
    out = Path(args.out)
    t0 = time.time()
    records = run_steps(steps, out, args.budget_min * 60)
    total = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps({"total_s": total, "steps": records}, indent=2))
    print(f"[gpu_check] {total} s in all; log {out / 'gpu_check.log'}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
