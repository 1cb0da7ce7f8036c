"""The command line of every d2align `train_net.py`, as in detectron2's `tools/train_net.py`.

A project's train_net.py is::

    from d2align.engine import launch_from_command_line
    from d2align.projects.<name> import add_<name>_config

    if __name__ == "__main__":
        launch_from_command_line(config_hooks=[add_<name>_config])

`--config-file`, `--eval-only`, `--resume`, `--num-gpus` and trailing `KEY VALUE` overrides
behave as in detectron2; without CUDA, `--num-gpus N` trains in N CPU processes (gloo).
Besides, a run holds `OUTPUT_DIR/train.lock` for its whole life (a
second run on the same OUTPUT_DIR is refused, naming the holder's PID; the lock of a dead
process is taken over), weights are loaded with `D2AlignCheckpointer` (no code runs from a
weights file; a checkpoint that does not fit the model is refused), and `final_results.json`
holds null, never NaN, where a value is undefined.
"""

import contextlib
import json
import logging
import math
import os
from typing import Callable, Iterable, Optional, Type

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ..atomic import atomic_write_text
from ..checkpoint import D2AlignCheckpointer
from ..config import add_d2align_config, check_common_config
from ..data.from_config import register_data_from_config
from ..lock import DirLock
from .distributed import launch
from .trainer import Trainer

ConfigHook = Callable[[CfgNode], None]
logger = logging.getLogger("d2align")


def merge_config_file_safely(cfg: CfgNode, config_file: str) -> None:
    """`cfg.merge_from_file` with YAML's safe loader for the file and its whole `_BASE_` chain.

    detectron2's default (`allow_unsafe=True`) falls back to PyYAML's unsafe loader when the
    safe one fails, so that a `!!python/object/apply:os.system [...]` tag in a config runs
    code. Here such a tag is refused: ValueError naming the file, the line and the tag. A
    `_BASE_` chain that loops, or a file in it that is not a YAML mapping, is refused naming
    the files.
    """
    _check_base_chain(config_file)
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.constructor.ConstructorError as err:
        where = err.problem_mark or err.context_mark
        raise ValueError(
            f"{config_file}: a config file may not run code; refused "
            f"{err.problem.strip()} at {str(where).strip()}"
        ) from None


def _check_base_chain(config_file: str) -> None:
    """Follow `_BASE_` from `config_file` as detectron2 does (relative to the including file);
    refuse a loop or a file that is not a YAML mapping, naming the files."""
    chain, path = [], os.path.abspath(config_file)
    while path:
        if path in chain:
            loop = " -> ".join(chain[chain.index(path) :] + [path])
            raise ValueError(f"{config_file}: its _BASE_ chain loops: {loop}")
        chain.append(path)
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except OSError as e:
            raise ValueError(f"{config_file}: cannot read {path} (in its _BASE_ chain): {e}")
        except yaml.YAMLError:
            return  # reported with its position by merge_from_file
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: a config file must be a YAML mapping (KEY: value), got "
                f"{type(data).__name__}"
                + (f" (the _BASE_ of {chain[-2]})" if len(chain) > 1 else "")
            )
        base = data.get("_BASE_")
        if base is None:
            return
        base = os.path.expanduser(str(base))
        path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        path = os.path.abspath(path)


def build_config(
    config_file: str = "", opts: Iterable[str] = (), config_hooks: Iterable[ConfigHook] = ()
) -> CfgNode:
    """detectron2's default config + d2align's keys + the projects' keys, merged with the file
    and the overrides. Falls back to the CPU when the config asks for CUDA and none is there."""
    cfg = get_cfg()
    add_d2align_config(cfg)
    for hook in config_hooks:
        hook(cfg)
    if config_file:
        merge_config_file_safely(cfg, config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            f"MODEL.DEVICE = {cfg.MODEL.DEVICE!r} but torch sees no CUDA device: running on the "
            "CPU (MODEL.DEVICE cpu)"
        )
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def load_config(
    config_file: str, opts: Iterable[str] = (), config_hooks: Iterable[ConfigHook] = ()
) -> CfgNode:
    """`build_config`, then register the datasets the config names, then freeze it: the config
    a command (training, evaluation, diagnostics, benchmark) runs with."""
    cfg = build_config(config_file, opts, config_hooks)
    if os.path.exists(cfg.OUTPUT_DIR) and not os.path.isdir(cfg.OUTPUT_DIR):
        raise ValueError(f"OUTPUT_DIR = {cfg.OUTPUT_DIR!r}: is a file, not a folder")
    check_common_config(cfg)
    if cfg.SEED < 0:
        logger.warning(
            f"SEED = {cfg.SEED}: a negative seed makes detectron2 draw a random one for this run "
            "(logged as 'Using a generated random seed ...'), so it cannot be repeated; set "
            "SEED >= 0 for a reproducible run."
        )
    register_data_from_config(cfg)
    cfg.freeze()
    return cfg


def setup(args, config_hooks: Iterable[ConfigHook] = ()) -> CfgNode:
    """`load_config` for a command-line run, plus detectron2's logging and seeding setup."""
    cfg = load_config(args.config_file, args.opts, config_hooks)
    default_setup(cfg, args)
    return cfg


RUN_LOCK = "train.lock"


@contextlib.contextmanager
def output_dir_lock(cfg: CfgNode):
    """Hold `OUTPUT_DIR/train.lock` (main process only) while the block runs.

    Raises:
        d2align.lock.LockHeld: another training or evaluation holds it (the message names the
            folder and the holder's PID, host, start time and command).
    """
    if not comm.is_main_process():
        yield
        return
    with DirLock(cfg.OUTPUT_DIR, RUN_LOCK, "training or evaluation"):
        yield


def _finite_or_none(value):
    """`value` with every NaN / inf replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_final_results(
    cfg: CfgNode, config_file: str, results: dict, train_s_per_iter: float
) -> str:
    """Write OUTPUT_DIR/final_results.json: the evaluation results plus train s/iter.

    Undefined values (NaN: the AP of a test set without ground truth, the train s/iter of an
    evaluation) are written as null, and "notes" says why when the AP columns are.
    """
    path = os.path.join(cfg.OUTPUT_DIR, "final_results.json")
    payload = {"config_file": config_file, "results": results}
    payload["speed"] = dict(results.get("speed", {}), train_s_per_iter=train_s_per_iter)
    payload = _finite_or_none(payload)
    notes = [
        f"{task} AP is null: the test set has no ground-truth annotation (none, or only "
        "crowd regions)"
        for task, values in payload["results"].items()
        if task != "speed" and isinstance(values, dict) and values.get("AP", 0) is None
    ]
    if notes:
        payload["notes"] = notes
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False))
    return path


def main(args, config_hooks: Iterable[ConfigHook] = (), trainer_cls: Type[Trainer] = Trainer):
    """Train (or with --eval-only, evaluate) one config; returns the evaluation results."""
    cfg = load_config(args.config_file, args.opts, config_hooks)
    with output_dir_lock(cfg):
        default_setup(cfg, args)
        return _run(cfg, args, trainer_cls)


def _run(cfg: CfgNode, args, trainer_cls: Type[Trainer]):
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        D2AlignCheckpointer.from_config(
            cfg, model, save_dir=cfg.OUTPUT_DIR, eval_only=True
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = trainer_cls.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
            if cfg.D2ALIGN.WRITE_RESULTS:
                write_final_results(cfg, args.config_file, results, float("nan"))
        return results

    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process() and cfg.D2ALIGN.WRITE_RESULTS and results:
        path = write_final_results(cfg, args.config_file, results, trainer.train_seconds_per_iter())
        logger.info(f"Final results written to {path}")
    return results


def launch_from_command_line(
    config_hooks: Iterable[ConfigHook] = (),
    trainer_cls: Type[Trainer] = Trainer,
    argv: Optional[list] = None,
):
    """Parse detectron2's standard arguments and launch `main` on --num-gpus processes (on a
    machine without CUDA, --num-gpus N processes on the CPU: see `d2align.engine.distributed`)."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    config_hooks = list(config_hooks)
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, config_hooks, trainer_cls),
    )
