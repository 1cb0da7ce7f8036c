"""`Trainer`: the one DefaultTrainer subclass that every d2align project trains with.

It adds to detectron2's DefaultTrainer:
  * `D2AlignCOCOEvaluator` (COCO AP plus AP50...AP90) for every test set;
  * inference seconds per image (pure model time, as detectron2's `inference_on_dataset`
    measures it) in the evaluation results, under "speed";
  * writers that skip TensorBoard when it is not installed;
  * a check that the model's number of classes matches the training set's;
  * the optimizer state in checkpoints (detectron2 v0.6 leaves it out), so `--resume`
    continues with the same momentum; a checkpoint without it (written by detectron2 v0.6's
    DefaultTrainer) resumes on detectron2 v0.6 and main alike;
  * multi-process training on the CPU (gloo, see `d2align.engine.distributed`);
  * `SOLVER.AMP.ENABLED` on the CPU: bfloat16 autocast (`d2align.engine.amp`); on CUDA it
    is detectron2's `AMPTrainer` (float16 with a gradient scaler);
  * `D2AlignCheckpointer` for loading MODEL.WEIGHTS and resuming (no code runs from a weights
    file; a checkpoint that does not fit the model is refused).
Projects subclass it only when they need another data mapper or evaluator.
"""

import logging
import os
import time
import weakref
from typing import List, Tuple

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import D2AlignCheckpointer
from ..data.datasets import check_something_to_learn
from ..data.mapper import NamingDatasetMapper
from ..evaluation import D2AlignCOCOEvaluator
from .amp import CPUAutocastTrainer

logger = logging.getLogger(__name__)


class _ForwardTimer(nn.Module):
    """Wraps a model and accumulates the wall time of its forward calls (inference only).

    The first `warmup` calls are not counted, as in detectron2's `inference_on_dataset`. On a
    CUDA device the clock starts and stops after `torch.cuda.synchronize()`, as detectron2's
    evaluator does: kernels run asynchronously, and without it the forward's time would be
    that of queueing them.
    """

    def __init__(self, model: nn.Module, warmup: int = 5, device: str = "cpu"):
        super().__init__()
        self.model = model
        self.synchronize = (
            torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        )
        self.warmup = warmup
        self.calls = 0
        self.images = 0
        self.seconds = 0.0

    def forward(self, batched_inputs):
        self.synchronize()
        start = time.perf_counter()
        outputs = self.model(batched_inputs)
        self.synchronize()
        elapsed = time.perf_counter() - start
        self.calls += 1
        if self.calls > self.warmup:
            self.images += len(batched_inputs)
            self.seconds += elapsed
        return outputs

    def seconds_per_image(self) -> float:
        return self.seconds / self.images if self.images else float("nan")


def _cfg_get(cfg, dotted_key: str):
    node = cfg
    for part in dotted_key.split("."):
        node = node[part]
    return node


def check_num_classes(cfg) -> None:
    """Raise if the model's NUM_CLASSES differs from the number of classes of DATASETS.TRAIN."""
    for name in cfg.DATASETS.TRAIN:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None:
            continue
        one_stage = "RetinaNet" in cfg.MODEL.META_ARCHITECTURE
        key = "MODEL.RETINANET.NUM_CLASSES" if one_stage else "MODEL.ROI_HEADS.NUM_CLASSES"
        if _cfg_get(cfg, key) != len(classes):
            raise ValueError(
                f"{key} = {_cfg_get(cfg, key)} but dataset '{name}' has {len(classes)} classes "
                f"({classes}); set {key} {len(classes)}"
            )


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with d2align's evaluator, timing and checks."""

    def __init__(self, cfg):
        check_num_classes(cfg)
        check_something_to_learn(cfg.DATASETS.TRAIN)
        if comm.get_world_size() > 1 and cfg.MODEL.DEVICE == "cpu":
            self._init_on_cpu_processes(cfg)
        else:
            super().__init__(cfg)
            if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
                # DefaultTrainer built detectron2's CUDA-only AMPTrainer: the CPU's instead
                inner = self._trainer
                self._trainer = CPUAutocastTrainer(inner.model, inner.data_loader, inner.optimizer)

    def _init_on_cpu_processes(self, cfg):
        """DefaultTrainer.__init__ for several processes on the CPU: the same steps, with a CPU
        DistributedDataParallel (detectron2's `create_ddp_model` passes `device_ids=[local
        rank]`, which DistributedDataParallel refuses for a module on the CPU)."""
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = DistributedDataParallel(model, broadcast_buffers=False)
        loop = CPUAutocastTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = loop(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = D2AlignCheckpointer.from_config(
            cfg, model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's loader with `NamingDatasetMapper`: an image that cannot be decoded
        (e.g. a JPEG damaged in the middle) is reported with its file and record."""
        return build_detection_train_loader(cfg, mapper=NamingDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with `NamingDatasetMapper` (see `build_train_loader`)."""
        return build_detection_test_loader(
            cfg, dataset_name, mapper=NamingDatasetMapper(cfg, False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return D2AlignCOCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate `model` on cfg.DATASETS.TEST; adds {"speed": {"inference_s_per_image"}}."""
        timed = _ForwardTimer(model, device=cfg.MODEL.DEVICE)
        results = dict(super().test(cfg, timed, evaluators))
        results["speed"] = {"inference_s_per_image": timed.seconds_per_image()}
        logger.info(f"Inference: {timed.seconds_per_image():.4f} s/image (model forward only)")
        return results

    def build_hooks(self):
        """detectron2's hooks, after replacing the DetectionCheckpointer that DefaultTrainer has
        just built by a `D2AlignCheckpointer` (same model, folder and trainer state), which
        `resume_or_load` and the PeriodicCheckpointer hook then share."""
        old = self.checkpointer
        self.checkpointer = D2AlignCheckpointer.from_config(
            self.cfg, old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables
        )
        return super().build_hooks()

    def build_writers(self):
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        writers = [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]
        try:
            import torch.utils.tensorboard  # noqa: F401  (optional dependency)
            from detectron2.utils.events import TensorboardXWriter

            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        except ImportError:
            logger.info("TensorBoard is not installed: metrics go to metrics.json only.")
        return writers

    def train(self):
        """Train, then return the results of the last evaluation (detectron2's DefaultTrainer
        returns them only when TEST.EXPECTED_RESULTS is set; `main` needs them to write
        final_results.json)."""
        try:
            super().train()
        except FloatingPointError as e:  # detectron2: "Loss became infinite or NaN at ..."
            raise FloatingPointError(f"{e}\n{divergence_hint(self.cfg)}") from e
        return getattr(self, "_last_eval_results", None)

    def state_dict(self):
        """Checkpointed trainer state, including the optimizer's (momentum buffers).

        detectron2 v0.6's DefaultTrainer saves only the iteration and the hooks' state, so a
        resumed run would restart with empty momentum; the inner SimpleTrainer's state (which
        holds the optimizer) is added under "_trainer", the key later detectron2 versions use.
        """
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        # TrainerBase's (iteration, hooks), not DefaultTrainer's: on detectron2 main the latter
        # also loads state_dict["_trainer"] and raises KeyError when it is missing.
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state; the optimizer starts anew.")

    def train_seconds_per_iter(self) -> float:
        """Median wall time of a training iteration so far (from the IterationTimer hook)."""
        history = self.storage.history("time") if "time" in self.storage.histories() else None
        return float(history.median(len(history.values()))) if history else float("nan")


def _scale_keys(node, prefix: str = "") -> List[Tuple[str, object]]:
    """(key, value) of every numeric key of `node` that scales a loss (`*LOSS_WEIGHT*`,
    `*_WEIGHT`, `*_WEIGHTS`, `*BETA*`)."""
    found = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            found += _scale_keys(value, name + ".")
        elif ("WEIGHT" in key or "BETA" in key) and key != "WEIGHTS" and _numeric(value):
            found.append((name, value))
    return found


def _numeric(value) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )


def divergence_hint(cfg) -> str:
    """The keys that set the size of a step and of the losses, with their values, for the
    message of a training whose loss became infinite or NaN."""
    lines = [
        f"SOLVER.BASE_LR={cfg.SOLVER.BASE_LR}",
        f"SOLVER.WARMUP_ITERS={cfg.SOLVER.WARMUP_ITERS}",
        f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}",
        f"MODEL.PIXEL_STD={list(cfg.MODEL.PIXEL_STD)}",
    ]
    lines += [f"{k}={v}" for k, v in _scale_keys(cfg.MODEL, "MODEL.")]
    return (
        "The training diverged. The keys that set the step size and the losses' scale: "
        + ", ".join(lines)
        + ". A learning rate or loss weight too large for this model and batch, or a tiny "
        "PIXEL_STD, is the usual cause; lower it, or raise SOLVER.WARMUP_ITERS."
    )


__all__ = ["Trainer", "check_num_classes", "divergence_hint"]
