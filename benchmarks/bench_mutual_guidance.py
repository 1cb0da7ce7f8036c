#!/usr/bin/env python
"""Training and inference cost of Mutual Guidance against the static rule, in one run.

Builds the static and the Mutual Guidance model of the CPU shapes configs with the same
weights, then times, on the same batches of the training set and alternating between the two
models, a training iteration (forward, backward, SGD step) and inference (seconds per image).
Prints seconds and the ratios MG / static (the goal for training is <= 1.15; inference runs
RetinaNet's unchanged code, so its ratio should be ~1).

    python benchmarks/bench_mutual_guidance.py [--iters 20] [--threads 1] [--opts K V ...]
"""

import os

import torch
from detectron2.modeling import build_model

from d2align.projects.mutual_guidance import add_mutual_guidance_config

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_mutual_guidance
    import paired_timing as timing
except ImportError:  # pragma: no cover
    from benchmarks import paired_timing as timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "projects", "MutualGuidance", "configs", "shapes")


def main():
    parser = timing.paired_timing_parser(__doc__.split("\n")[0])
    args = timing.parse_args_and_set_threads(parser)

    cfgs = {
        name: timing.benchmark_config(
            os.path.join(CONFIGS, f"{name}_R18_FPN_scratch.yaml"),
            args.opts,
            [add_mutual_guidance_config],
        )
        for name in ("static", "mutual_guidance")
    }
    torch.manual_seed(cfgs["static"].SEED)
    models = {name: build_model(cfg) for name, cfg in cfgs.items()}
    models["mutual_guidance"].load_state_dict(models["static"].state_dict())
    timings = timing.time_models(models, cfgs["static"], args.iters, args.warmup)
    timing.print_setup(cfgs["static"], args)
    # inference runs RetinaNet's unchanged code, so its ratio should be ~1
    timing.print_ratios(timings, [("mutual_guidance", "static")], goals={"train": "<= 1.15x"})


if __name__ == "__main__":
    main()
