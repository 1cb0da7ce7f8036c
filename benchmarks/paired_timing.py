"""Paired timing of detectors on the same batches, shared by the `bench_*.py` scripts.

Several models built from CPU shapes configs are timed on the same training batches,
alternating between them inside every iteration so that a change of machine load hits all of
them alike: one training iteration (forward, backward, SGD step with lr 0, so that the weights
stay put) and inference (seconds per image, model forward only). Medians are reported, and
ratios against a reference model of the same run.
"""

import argparse
import copy
import itertools
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data import build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2align.data.from_config import register_data_from_config
from d2align.engine import build_config

__all__ = [
    "paired_timing_parser",
    "parse_args_and_set_threads",
    "benchmark_config",
    "load_shared_weights",
    "build_with_twins",
    "train_step_seconds",
    "inference_seconds_per_image",
    "time_models",
    "print_setup",
    "print_ratios",
]


def paired_timing_parser(description: str) -> argparse.ArgumentParser:
    """The command line shared by the paired benchmarks: --iters, --warmup, --threads, --opts
    (a script adds its own arguments to it before parsing)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides K V ...")
    return parser


def parse_args_and_set_threads(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """Parse the command line (`argv`, default sys.argv) and set torch's intra-op thread count
    to its --threads."""
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def benchmark_config(config_file: str, opts: Sequence[str], config_hooks: Sequence = ()):
    """The frozen config of `config_file` with `opts`, loading data in the main process
    (DATALOADER.NUM_WORKERS 0, so that data loading is not timed in another process), with its
    datasets registered."""
    cfg = build_config(
        config_file, ["DATALOADER.NUM_WORKERS", "0"] + list(opts), list(config_hooks)
    )
    register_data_from_config(cfg)
    return cfg


def load_shared_weights(model: torch.nn.Module, source: torch.nn.Module) -> int:
    """Copy into `model` every tensor of `source` with the same name and shape (so that two
    detectors that differ in one head see the same backbone and proposals); returns how many
    tensors were copied."""
    own = model.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    return len(shared)


def build_with_twins(cfgs: Dict[str, object], twins: Dict[str, Optional[str]]):
    """Build the model of every config (torch seeded with its SEED first), in order; a model
    with a twin (an earlier name) then loads the twin's tensors of the same name and shape
    (`load_shared_weights`), and the number loaded is printed.

    Args:
        cfgs: name -> config.
        twins: name -> the name of the model it copies weights from, or None.

    Returns:
        name -> model.
    """
    models = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(cfg.SEED)
        models[name] = build_model(cfg)
        twin = twins.get(name)
        if twin is not None:
            copied = load_shared_weights(models[name], models[twin])
            print(f"{name}: {copied} tensors loaded from {twin}")
    return models


def train_step_seconds(model: torch.nn.Module, optimizer, batch: List[dict]) -> float:
    """Wall time of one forward + backward + optimizer step of `model` on `batch`."""
    start = time.perf_counter()
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return time.perf_counter() - start


def inference_seconds_per_image(model: torch.nn.Module, batch: List[dict]) -> float:
    """Wall time of `model`'s inference on the images of `batch`, divided by their number."""
    images = [{"image": x["image"], "height": x["height"], "width": x["width"]} for x in batch]
    start = time.perf_counter()
    with torch.no_grad():
        model(images)
    return (time.perf_counter() - start) / len(images)


def time_models(
    models: Dict[str, torch.nn.Module], cfg, iters: int, warmup: int
) -> Dict[str, Dict[str, float]]:
    """Median training s/iter and inference s/image of every model on the same batches.

    Args:
        models: name -> model (in training mode or not: both modes are set here).
        cfg: the config whose training loader yields the batches (its SOLVER.IMS_PER_BATCH).
        iters: timed iterations; warmup: untimed iterations before them.

    Returns:
        name -> {"train": s/iter, "inference": s/image} (medians).
    """
    optimizers = {
        name: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9) for name, m in models.items()
    }
    loader = build_detection_train_loader(cfg)
    batches = [copy.deepcopy(b) for b in itertools.islice(loader, warmup + iters)]
    train = {name: [] for name in models}
    infer = {name: [] for name in models}
    with EventStorage():
        for i, batch in enumerate(batches):
            for name, model in models.items():
                model.train()
                step = train_step_seconds(model, optimizers[name], batch)
                model.eval()
                per_image = inference_seconds_per_image(model, batch)
                if i >= warmup:
                    train[name].append(step)
                    infer[name].append(per_image)
    return {
        name: {"train": statistics.median(train[name]), "inference": statistics.median(infer[name])}
        for name in models
    }


def print_setup(cfg, args: argparse.Namespace, what: str = "shapes config", note: str = ""):
    """Print the run's setting: `what`, the image size and batch of `cfg`, the timed iterations
    and threads of `args`, and `note` when given."""
    size, batch = cfg.INPUT.MAX_SIZE_TRAIN, cfg.SOLVER.IMS_PER_BATCH
    note = f", {note}" if note else ""
    print(f"{what}, {size} px, batch {batch}, {args.iters} timed iterations, "
          f"{args.threads} thread(s){note}; medians:")  # fmt: skip


def print_ratios(
    timings: Dict[str, Dict[str, float]], pairs: Sequence[Sequence[str]], goals: Dict[str, str]
) -> None:
    """Print every model's medians, then `method / reference` for each (method, reference)
    pair, with the goal of each measure (e.g. {"train": "<= 1.1x"}) next to it."""
    for name, t in timings.items():
        print(
            f"  {name:34s} train {t['train']:.4f} s/iter   inference {t['inference']:.4f} s/image"
        )
    for method, reference in pairs:
        parts = []
        for measure in ("train", "inference"):
            ratio = timings[method][measure] / timings[reference][measure]
            goal = f" (goal {goals[measure]})" if measure in goals else ""
            parts.append(f"{measure} {ratio:.3f}x{goal}")
        print(f"ratio {method} / {reference}: " + ", ".join(parts))
