#!/usr/bin/env python
"""Mixed precision against float32 on the CPU, every headline row: training s/iter and
inference s/image under bfloat16 autocast (what `SOLVER.AMP.ENABLED` does on the CPU) divided
by float32, same model, same batches, same run.

For each row of `configs/suites/headline.yaml` one model is built from its shapes config; it is
timed alternately in float32 and under `torch.autocast("cpu", dtype=torch.bfloat16)` on the
same training batches (`paired_timing.py`: SGD with lr 0, so the weights stay put; medians).
Random weights: inference keeps every candidate above the score thresholds, a worst case for
the post-processing. Ratios below 1 mean bfloat16 is faster. Measure on an idle machine: the
two precisions alternate within every iteration, but a loaded machine still blurs them.

    python benchmarks/bench_amp.py [--rows faster_rcnn cpm_rcnn ...] [--iters 10] [--threads 1]
"""

import os

import torch
from torch import nn

from d2align.engine.amp import CPU_AMP_DTYPE
from d2align.projects import config_hooks_for

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_amp
    import paired_timing as timing
except ImportError:  # pragma: no cover
    from benchmarks import paired_timing as timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = {
    "faster_rcnn": "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml",
    "iou_net": "projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml",
    "offset_bin": "projects/OffsetBin/configs/shapes/"
    "bin_expectation_hierarchical_R18_FPN_scratch.yaml",
    "cpm_rcnn": "projects/CPMRCNN/configs/shapes/cpm_rcnn_R18_FPN_scratch.yaml",
    "retinanet": "configs/shapes/retinanet_R18_FPN_scratch.yaml",
    "mutual_guidance": "projects/MutualGuidance/configs/shapes/"
    "mutual_guidance_R18_FPN_scratch.yaml",
    "dc_loss": "projects/DCLoss/configs/shapes/iac_dc_clnms_R18_FPN_scratch.yaml",
}  # fmt: skip


class Autocast(nn.Module):
    """`model` whose forward runs under bfloat16 autocast on the CPU (the same parameters)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs):
        with torch.autocast("cpu", dtype=CPU_AMP_DTYPE):
            return self.model(batched_inputs)


def main(argv=None):
    parser = timing.paired_timing_parser(__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    args = timing.parse_args_and_set_threads(parser, argv)
    cfgs = {}
    for row in args.rows:
        path = os.path.join(ROOT, ROWS[row])
        cfgs[row] = timing.benchmark_config(path, args.opts, config_hooks_for(path))
    models = timing.build_with_twins(cfgs, {})
    timed = {}
    for row, model in models.items():
        timed[f"{row} float32"] = model
        timed[f"{row} bfloat16"] = Autocast(model)
    first = next(iter(cfgs.values()))
    timings = timing.time_models(timed, first, args.iters, args.warmup)
    timing.print_setup(first, args, note="bfloat16 autocast against float32, same model")
    pairs = [(f"{row} bfloat16", f"{row} float32") for row in models]
    timing.print_ratios(timings, pairs, {})
    return timings


if __name__ == "__main__":
    main()
