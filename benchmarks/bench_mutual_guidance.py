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
import copy
import itertools
import os
import time

import torch
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2align.data.from_config import register_data_from_config
from d2align.engine import build_config
from d2align.projects.mutual_guidance import add_mutual_guidance_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "projects", "MutualGuidance", "configs", "shapes")


def _cfg(assignment: str, opts):
    config = os.path.join(CONFIGS, f"{assignment}_R18_FPN_scratch.yaml")
    cfg = build_config(config, ["DATALOADER.NUM_WORKERS", "0"] + list(opts),
                       [add_mutual_guidance_config])  # fmt: skip
    register_data_from_config(cfg)
    return cfg


def _train_step(model, optimizer, batch) -> float:
    start = time.perf_counter()
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return time.perf_counter() - start


def _infer(model, batch) -> float:
    images = [{"image": x["image"], "height": x["height"], "width": x["width"]} for x in batch]
    start = time.perf_counter()
    with torch.no_grad():
        model(images)
    return (time.perf_counter() - start) / len(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides K V ...")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfgs = {name: _cfg(name, args.opts) for name in ("static", "mutual_guidance")}
    torch.manual_seed(cfgs["static"].SEED)
    models = {name: build_model(cfg) for name, cfg in cfgs.items()}
    models["mutual_guidance"].load_state_dict(models["static"].state_dict())
    optimizers = {
        name: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9) for name, m in models.items()
    }  # lr 0: both models keep the same weights, the step itself is still timed
    loader = build_detection_train_loader(cfgs["static"])
    batches = [copy.deepcopy(b) for b in itertools.islice(loader, args.warmup + args.iters)]

    train = {name: [] for name in models}
    infer = {name: [] for name in models}
    with EventStorage():
        for i, batch in enumerate(batches):
            for name, model in models.items():
                model.train()
                step = _train_step(model, optimizers[name], batch)
                model.eval()
                per_image = _infer(model, batch)
                if i >= args.warmup:
                    train[name].append(step)
                    infer[name].append(per_image)

    def median(xs):
        return sorted(xs)[len(xs) // 2]

    size = cfgs["static"].INPUT.MAX_SIZE_TRAIN
    print(f"shapes config, {size} px, batch {cfgs['static'].SOLVER.IMS_PER_BATCH}, "
          f"{args.iters} timed iterations, {args.threads} thread(s); medians:")  # fmt: skip
    for name in models:
        print(f"  {name:16s} train {median(train[name]):.4f} s/iter   "
              f"inference {median(infer[name]):.4f} s/image")  # fmt: skip
    train_ratio = median(train["mutual_guidance"]) / median(train["static"])
    infer_ratio = median(infer["mutual_guidance"]) / median(infer["static"])
    print(f"ratio MG / static: train {train_ratio:.3f}x (goal <= 1.15x), "
          f"inference {infer_ratio:.3f}x (same code: ~1)")  # fmt: skip


if __name__ == "__main__":
    main()
