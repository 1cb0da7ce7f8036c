#!/usr/bin/env python
"""Training and inference cost of Mutual Guidance against the static rule, in one run.

Builds the static and the Mutual Guidance model of the CPU shapes configs with the same
weights, then times, on the same batches of the training set and alternating between the two
models, a training iteration (forward, backward, SGD step) and inference (seconds per image).
Prints seconds and the ratios MG / static (the goal for training is <= 1.15; inference runs
RetinaNet's unchanged code, so its ratio should be ~1).

    python benchmarks/bench_mutual_guidance.py [--iters 20] [--threads 1] [--opts K V ...]
"""

import argparse
import os

import torch
from detectron2.modeling import build_model

from d2align.projects.mutual_guidance import add_mutual_guidance_config

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_mutual_guidance
    from paired_timing import benchmark_config, print_ratios, time_models
except ImportError:  # pragma: no cover
    from benchmarks.paired_timing import benchmark_config, print_ratios, time_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "projects", "MutualGuidance", "configs", "shapes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides K V ...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfgs = {
        name: benchmark_config(
            os.path.join(CONFIGS, f"{name}_R18_FPN_scratch.yaml"),
            args.opts,
            [add_mutual_guidance_config],
        )
        for name in ("static", "mutual_guidance")
    }
    torch.manual_seed(cfgs["static"].SEED)
    models = {name: build_model(cfg) for name, cfg in cfgs.items()}
    models["mutual_guidance"].load_state_dict(models["static"].state_dict())
    timings = time_models(models, cfgs["static"], args.iters, args.warmup)
    size = cfgs["static"].INPUT.MAX_SIZE_TRAIN
    print(f"shapes config, {size} px, batch {cfgs['static'].SOLVER.IMS_PER_BATCH}, "
          f"{args.iters} timed iterations, {args.threads} thread(s); medians:")  # fmt: skip
    # inference runs RetinaNet's unchanged code, so its ratio should be ~1
    print_ratios(timings, [("mutual_guidance", "static")], goals={"train": "<= 1.15x"})


if __name__ == "__main__":
    main()
