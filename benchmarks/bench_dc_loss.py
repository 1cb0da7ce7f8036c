#!/usr/bin/env python
"""Training and inference cost of DC Loss against the static RetinaNet, in one run.

Builds three models of the CPU shapes configs with the same weights: Table 2's baseline
(detectron2's RetinaNet), "+ IAC + DC" (the training of the method) and "+ IAC + DC + CL-NMS"
(the same model with CL-balanced NMS). On the same batches of the training set, alternating
between the models, it times a training iteration (forward, backward, SGD step) and inference
(seconds per image), and prints seconds and the ratios (goals: <= 1.1x for both):

    train      IAC + DC / RetinaNet  (the assignment and the loss weighting)
    inference  CL-NMS / standard NMS (same model, same candidates)

Without --weights the classification prior is raised to p = 0.1 (above the 0.05 score
threshold), so that every level yields its TOPK_CANDIDATES_TEST candidates: the NMS's worst
case. With --weights (e.g. a trained model_final.pth) the candidates are a trained model's.

    python benchmarks/bench_dc_loss.py [--iters 20] [--threads 1] [--weights W] [--opts K V ...]
"""

import math
import os

import torch
from detectron2.modeling import build_model

from d2align.checkpoint import D2AlignCheckpointer
from d2align.projects.dc_loss import add_dc_loss_config

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.bench_dc_loss
    import paired_timing as timing
except ImportError:  # pragma: no cover
    from benchmarks import paired_timing as timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "projects", "DCLoss", "configs", "shapes")
ROWS = ("retinanet", "iac_dc", "iac_dc_clnms")


def _config_file(row: str) -> str:
    return os.path.join(CONFIGS, f"{row}_R18_FPN_scratch.yaml")


def main():
    parser = timing.paired_timing_parser(__doc__.split("\n")[0])
    parser.add_argument("--weights", default="", help="weights of all three models")
    args = timing.parse_args_and_set_threads(parser)

    cfgs = {
        row: timing.benchmark_config(_config_file(row), args.opts, [add_dc_loss_config])
        for row in ROWS
    }
    torch.manual_seed(cfgs["retinanet"].SEED)
    models = {row: build_model(cfg) for row, cfg in cfgs.items()}
    reference = models["retinanet"]
    if args.weights:
        D2AlignCheckpointer.from_config(cfgs["retinanet"], reference, eval_only=True).load(
            args.weights
        )
    else:
        prior = 0.1
        torch.nn.init.constant_(reference.head.cls_score.bias, -math.log((1 - prior) / prior))
    for row in ROWS[1:]:
        models[row].load_state_dict(reference.state_dict())
    timings = timing.time_models(models, cfgs["retinanet"], args.iters, args.warmup)
    weights = f"weights {args.weights}" if args.weights else "prior p = 0.1"
    timing.print_setup(cfgs["retinanet"], args, note=weights)
    # the first pair's inference and the second pair's training run the same code (~1x)
    timing.print_ratios(
        timings,
        [("iac_dc", "retinanet"), ("iac_dc_clnms", "iac_dc")],
        goals={"train": "<= 1.1x", "inference": "<= 1.1x"},
    )


if __name__ == "__main__":
    main()
