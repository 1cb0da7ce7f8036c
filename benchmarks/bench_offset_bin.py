#!/usr/bin/env python
"""Training and inference cost of Offset Bin Classification against box regression, same run.

Builds, from the CPU shapes configs, Faster R-CNN (regression) and its Offset Bin version
(bins + expectation + K = 2 hierarchical focusing), and the 2-stage Cascade R-CNN with and
without bins. Each bin model loads its regression twin's weights wherever the names and shapes
agree (backbone, RPN, box head, classifier: everything but the box predictor's last layer), so
both see the same proposals. They are timed alternately on the same training batches (training
s/iter, inference s/image; see `paired_timing.py`); the ratios bins / regression are printed.
The paper gives no timing; the goal here is that bins cost little beyond the larger last layer
(4 x n x K outputs instead of 4).

    python benchmarks/bench_offset_bin.py [--iters 20] [--threads 1] [--opts K V ...]
"""

import argparse
import os

import torch
from detectron2.modeling import build_model

from d2align.projects.offset_bin import add_offset_bin_config

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_offset_bin
    from paired_timing import benchmark_config, load_shared_weights, print_ratios, time_models
except ImportError:  # pragma: no cover
    from benchmarks.paired_timing import (
        benchmark_config,
        load_shared_weights,
        print_ratios,
        time_models,
    )

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(ROOT, "projects", "OffsetBin", "configs", "shapes")
FASTER = os.path.join(ROOT, "configs", "shapes", "faster_rcnn_R18_FPN_scratch.yaml")
# name -> (config file, the regression twin it is compared with)
CONFIGS = {
    "Faster R-CNN (regression)": (FASTER, None),
    "Offset Bin (exp. + hier.)": (
        os.path.join(SHAPES, "bin_expectation_hierarchical_R18_FPN_scratch.yaml"),
        "Faster R-CNN (regression)",
    ),
    "Cascade 2-stage (regression)": (
        os.path.join(SHAPES, "cascade_rcnn_2stage_R18_FPN_scratch.yaml"),
        None,
    ),
    "Cascade 2-stage + bins": (
        os.path.join(SHAPES, "cascade_bin_expectation_R18_FPN_scratch.yaml"),
        "Cascade 2-stage (regression)",
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides K V ...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfgs = {
        name: benchmark_config(path, args.opts, [add_offset_bin_config])
        for name, (path, _) in CONFIGS.items()
    }
    models = {}
    for name, (_, twin) in CONFIGS.items():
        torch.manual_seed(cfgs[name].SEED)
        models[name] = build_model(cfgs[name])
        if twin is not None:
            copied = load_shared_weights(models[name], models[twin])
            print(f"{name}: {copied} tensors loaded from {twin}")
    reference = cfgs["Faster R-CNN (regression)"]
    timings = time_models(models, reference, args.iters, args.warmup)
    print(f"shapes configs, {reference.INPUT.MAX_SIZE_TRAIN} px, batch "
          f"{reference.SOLVER.IMS_PER_BATCH}, {args.iters} timed iterations, {args.threads} "
          "thread(s); medians:")  # fmt: skip
    pairs = [(name, twin) for name, (_, twin) in CONFIGS.items() if twin is not None]
    print_ratios(timings, pairs, goals={})


if __name__ == "__main__":
    main()
