"""`D2AlignCheckpointer`: detectron2's DetectionCheckpointer, safe to point at a file someone sent.

Two things change against detectron2's checkpointer:

* **No code runs while reading weights.** detectron2 reads `.pkl` files (Detectron / model-zoo
  format) with `pickle`, which runs whatever a crafted file asks for. Here they go through
  `load_pickle_weights`, an unpickler that only builds what such files hold (dicts, lists,
  numbers, strings, numpy arrays and scalars) and refuses any other global with an
  `UnsafeCheckpointError` naming the file and the refused global. `.pth` / `.pyth` files are
  read with `torch.load(weights_only=True)`.
* **A checkpoint that does not fit the model is refused.** detectron2 only warns about missing
  keys, so a RetinaNet checkpoint evaluated as Faster R-CNN, or a file whose keys match nothing,
  silently evaluates to AP 0. Here loading raises `CheckpointMismatchError` (how many of the
  model's weights were found, a few missing / unexpected / wrongly shaped names) when fewer
  than `min_matched_fraction` of the model's state_dict entries are found with the right shape.
  Config keys (`D2ALIGN.CHECKPOINT`): `MIN_MATCHED_FRACTION_TRAIN` for initialising a training
  from MODEL.WEIGHTS (default 0.5: a backbone-only checkpoint is accepted) and
  `MIN_MATCHED_FRACTION_EVAL` for --eval-only and --resume (default 1.0: every weight).
* **Weights must be finite, files whole.** A checkpoint holding NaN or inf (a diverged run's)
  is refused naming the file and the first such tensor (it would evaluate to AP 0, or train
  into "Training has diverged"); an empty or truncated file is refused naming the file.
"""

import collections
import os
import pickle
from typing import Any, Dict, Iterable

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode

from .atomic import atomic_write, atomic_write_text

__all__ = [
    "CheckpointMismatchError",
    "D2AlignCheckpointer",
    "UnsafeCheckpointError",
    "check_finite_weights",
    "load_pickle_weights",
    "load_torch_weights",
]

# (module, name) of every global a Detectron / detectron2 model-zoo `.pkl` may reference: numpy
# arrays (protocols 2-5, numpy 1 and 2 module names), numpy scalars and dtypes, ordered dicts,
# and `_codecs.encode` (how protocol 2 stores bytes).
_ALLOWED_GLOBALS = frozenset(
    [(m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]
    + [(m, "scalar") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")]
    + [("_codecs", "encode")]
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A weights file asks to build something a weights file never needs (code could run)."""


class CheckpointMismatchError(ValueError):
    """Too few of the model's weights were found in the checkpoint."""


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, file, filename: str):
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"{self.filename}: refused to unpickle the global '{module}.{name}': a .pkl "
                "weights file may only hold dicts, lists, numbers, strings and numpy arrays "
                "(loading it could run code; only load files you trust with plain pickle)"
            )
        return super().find_class(module, name)


def load_pickle_weights(filename: str) -> Dict[str, Any]:
    """Read a Detectron / detectron2 model-zoo `.pkl` without running code from the file.

    Args:
        filename (str): path of the file.

    Returns:
        The unpickled dict (values: numpy arrays, numbers, strings, nested dicts / lists).

    Raises:
        UnsafeCheckpointError: the file references any other global (names the file and it).
        ValueError: the file is not a pickle of a dict.
    """
    with open(filename, "rb") as f:
        try:
            data = _WeightsUnpickler(f, filename).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:
            raise ValueError(f"{filename}: not a readable .pkl weights file: {e!r}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{filename}: a .pkl weights file must hold a dict, not a {type(data)}")
    return data


def load_torch_weights(filename: str) -> Dict[str, Any]:
    """`torch.load(weights_only=True)` on the CPU, with an error naming the file.

    Raises:
        UnsafeCheckpointError: the file holds objects other than tensors and plain containers.
        ValueError: the file is not a dict.
    """
    try:
        data = torch.load(filename, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{filename}: refused by torch.load(weights_only=True), the file holds more than "
            f"tensors and plain containers: {e}"
        ) from e
    except (EOFError, RuntimeError) as e:  # empty, truncated, not a torch file
        raise ValueError(
            f"{filename}: not a readable checkpoint (empty, truncated or not written by "
            f"torch.save): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{filename}: a checkpoint must hold a dict, not a {type(data)}")
    return data


def check_finite_weights(filename: str, state: Dict[str, Any]) -> None:
    """Raise ValueError naming `filename` and the first weight (in the file's order) that
    holds NaN or inf. `state`: name -> tensor or numpy array (other values are skipped)."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            bad = value.is_floating_point() and not bool(torch.isfinite(value).all())
        elif hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f":  # numpy
            bad = not bool(np.isfinite(value).all())
        else:
            continue
        if bad:
            raise ValueError(
                f"{filename}: weight '{name}' holds non-finite values (NaN or inf); a diverged "
                "run's checkpoint? Refused: it would evaluate to AP 0 or train on NaN"
            )


def _summary(keys: Iterable[str], examples: int = 3) -> str:
    """E.g. "20 (backbone: 6, proposal_generator: 6, roi_heads: 8; e.g. backbone.fpn.a, ...)"."""
    keys = sorted(keys)
    if not keys:
        return "none"
    counts = collections.Counter(k.split(".")[0] for k in keys)
    by_module = ", ".join(f"{m}: {n}" for m, n in sorted(counts.items()))
    shown = ", ".join(keys[:examples]) + (", ..." if len(keys) > examples else "")
    return f"{len(keys)} ({by_module}; e.g. {shown})"


class D2AlignCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with safe file reading and a refusal of checkpoints that do not fit.

    Args:
        model, save_dir, save_to_disk, checkpointables: as DetectionCheckpointer.
        min_matched_fraction (float): in [0, 1]; `load` of a given path is refused when fewer
            than this fraction of the model's state_dict entries are found with the right shape.
        resume_min_matched_fraction (float): the same for `resume_or_load` resuming from the
            last checkpoint of `save_dir`.
        fraction_keys (tuple[str, str]): the config keys of the two fractions, for the messages.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        min_matched_fraction: float = 1.0,
        resume_min_matched_fraction: float = 1.0,
        fraction_keys=("min_matched_fraction", "resume_min_matched_fraction"),
        save_to_disk=None,
        **checkpointables,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        for fraction in (min_matched_fraction, resume_min_matched_fraction):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"min_matched_fraction {fraction} is not in [0, 1]")
        self.min_matched_fraction = min_matched_fraction
        self.resume_min_matched_fraction = resume_min_matched_fraction
        self.fraction_keys = tuple(fraction_keys)
        self._required = (min_matched_fraction, self.fraction_keys[0])
        self._loading = ""  # the file being loaded, for the messages

    @classmethod
    def from_config(
        cls, cfg: CfgNode, model, save_dir: str = "", *, eval_only: bool = False, **kwargs
    ):
        """A checkpointer with the fractions of `cfg.D2ALIGN.CHECKPOINT`: MIN_MATCHED_FRACTION_EVAL
        for --eval-only and for resuming, MIN_MATCHED_FRACTION_TRAIN for initialising a
        training from MODEL.WEIGHTS."""
        node = "D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_"
        train, evaluate = (
            cfg.D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_TRAIN,
            cfg.D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_EVAL,
        )
        first = (evaluate, node + "EVAL") if eval_only else (train, node + "TRAIN")
        return cls(
            model,
            save_dir,
            min_matched_fraction=first[0],
            resume_min_matched_fraction=evaluate,
            fraction_keys=(first[1], node + "EVAL"),
            **kwargs,
        )

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        if resume and self.has_checkpoint():
            self._required = (self.resume_min_matched_fraction, self.fraction_keys[1])
        else:
            self._required = (self.min_matched_fraction, self.fraction_keys[0])
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._required = (self.min_matched_fraction, self.fraction_keys[0])

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's `save`, written atomically (`d2align.atomic`): a kill or a full disk during
        the save leaves the previous checkpoint, never a truncated `<name>.pth` (or a
        `last_checkpoint` naming one)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_write(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        self._loading = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        checkpoint = self._read_file(filename)
        check_finite_weights(filename, checkpoint.get("model", {}))
        return checkpoint

    def _read_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            data = load_pickle_weights(filename)
            if "model" in data and "__author__" in data:  # detectron2 model-zoo format
                return data
            data = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
            if not isinstance(data, dict):
                raise ValueError(f"{filename}: 'blobs' is not a dict of arrays")
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        loaded = load_torch_weights(filename)
        if filename.endswith(".pyth"):  # pycls
            if not isinstance(loaded.get("model_state"), dict):
                raise ValueError(f"{filename}: a pycls .pyth checkpoint needs 'model_state'")
            state = {k: v for k, v in loaded["model_state"].items() if not k.endswith("_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return loaded if "model" in loaded else {"model": loaded}

    def _load_model(self, checkpoint: Dict[str, Any]):
        incompatible = super()._load_model(checkpoint)
        expected = [k for k in self.model.state_dict() if k not in ("pixel_mean", "pixel_std")]
        wrong_shape = {k for k, *_ in incompatible.incorrect_shapes}
        missing = (set(incompatible.missing_keys) | wrong_shape) & set(expected)
        matched = len(expected) - len(missing)
        required, key = self._required
        if expected and matched < required * len(expected):
            unexpected = set(incompatible.unexpected_keys)
            raise CheckpointMismatchError(
                f"{self._loading}: only {matched} of the model's "
                f"{len(expected)} weights ({100.0 * matched / len(expected):.1f}%) were found "
                f"in the checkpoint with the right shape; {key} = {required} requires more. "
                f"Missing: {_summary(missing - wrong_shape)}; wrong shape: {_summary(wrong_shape)};"
                f" unexpected in the checkpoint: {_summary(unexpected)}. Is it the checkpoint of "
                f"another model or config? To load it partially on purpose, set {key} "
                f"to a lower value (0 accepts any checkpoint)."
            )
        return incompatible
