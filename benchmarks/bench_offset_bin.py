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

import os

from d2align.projects.offset_bin import add_offset_bin_config

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_offset_bin
    import paired_timing as timing
except ImportError:  # pragma: no cover
    from benchmarks import paired_timing as timing

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
    parser = timing.paired_timing_parser(__doc__.split("\n")[0])
    args = timing.parse_args_and_set_threads(parser)

    cfgs = {
        name: timing.benchmark_config(path, args.opts, [add_offset_bin_config])
        for name, (path, _) in CONFIGS.items()
    }
    models = timing.build_with_twins(cfgs, {name: twin for name, (_, twin) in CONFIGS.items()})
    reference = cfgs["Faster R-CNN (regression)"]
    timings = timing.time_models(models, reference, args.iters, args.warmup)
    timing.print_setup(reference, args, "shapes configs")
    pairs = [(name, twin) for name, (_, twin) in CONFIGS.items() if twin is not None]
    timing.print_ratios(timings, pairs, goals={})


if __name__ == "__main__":
    main()
