"""Issue 14, items 1-2: no code runs from a weights file; a checkpoint that does not fit is refused.

Each test fails on the code before `d2align.checkpoint` (detectron2's checkpointer unpickles
`.pkl` files with `pickle` and only warns about missing keys).
"""

import os
import pickle

import pytest
import torch

from d2align.checkpoint import (
    CheckpointMismatchError,
    D2AlignCheckpointer,
    UnsafeCheckpointError,
    load_pickle_weights,
)
from d2align.engine import Trainer, build_config
from d2align.engine.launcher import main
from d2align.testing import ROOT

FASTER = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
RETINA = "configs/shapes/retinanet_R18_FPN_scratch.yaml"


class _Touch:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model(config, *opts):
    cfg = build_config(os.path.join(ROOT, config), ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return cfg, Trainer.build_model(cfg)


@pytest.fixture(scope="module")
def faster(tmp_path_factory):
    """(cfg, model, path of its .pth checkpoint)."""
    cfg, model = _model(FASTER)
    folder = tmp_path_factory.mktemp("faster_ckpt")
    D2AlignCheckpointer(model, str(folder)).save("model_final")
    return cfg, model, str(folder / "model_final.pth")


@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, faster, protocol):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {}, "x": _Touch(marker)}, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pkl.*'posix\.system'"):
        D2AlignCheckpointer(faster[1]).load(str(evil))
    assert not marker.exists()


def test_malicious_pth_is_refused_and_runs_nothing(tmp_path, faster):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Touch(marker)}, str(evil))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*weights_only"):
        D2AlignCheckpointer(faster[1]).load(str(evil))
    assert not marker.exists()


def test_eval_only_with_a_malicious_pkl_runs_nothing(tmp_path):
    # The command: --eval-only MODEL.WEIGHTS evil.pkl (the integer payload made the
    # run die with "'int' object has no attribute 'keys'" after the command had run).
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Touch(marker)))
    args = _args(FASTER, tmp_path, "MODEL.WEIGHTS", str(evil))
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        main(args)
    assert not marker.exists()


def _args(config, out, *opts, eval_only=True):
    from detectron2.engine import default_argument_parser

    argv = ["--config-file", os.path.join(ROOT, config)] + (["--eval-only"] if eval_only else [])
    return default_argument_parser().parse_args(
        argv + ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out), *opts]
    )


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_style_pkl_still_loads(tmp_path, faster, protocol):
    # detectron2 model-zoo format: {"model": {name: numpy array}, "__author__": ...}, plus
    # numpy scalars and an OrderedDict, as such files hold.
    cfg, model, _ = faster
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    payload = {"model": arrays, "__author__": "test", "iteration": torch.tensor(3).numpy()[()]}
    path = tmp_path / "zoo.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    assert load_pickle_weights(str(path))["iteration"] == 3
    _, fresh = _model(FASTER, "SEED", "1")
    torch.manual_seed(1)
    for p in fresh.parameters():  # make sure the load changes something
        torch.nn.init.normal_(p)
    D2AlignCheckpointer.from_config(cfg, fresh, eval_only=True).load(str(path))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_pkl_that_is_not_a_dict_names_the_file(tmp_path, faster):
    path = tmp_path / "int.pkl"
    path.write_bytes(pickle.dumps(3))
    with pytest.raises(ValueError, match=r"int\.pkl: a \.pkl weights file must hold a dict"):
        D2AlignCheckpointer(faster[1]).load(str(path))


def test_unrelated_checkpoint_is_refused(tmp_path, faster):
    cfg, model, _ = faster
    path = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(3, 3)}}, str(path))
    checkpointer = D2AlignCheckpointer.from_config(cfg, model)  # training: 0.5 by default
    n = len(model.state_dict())
    message = rf"other\.pth: only 0 of the model's {n} weights \(0\.0%\).*TRAIN = 0\.5"
    with pytest.raises(CheckpointMismatchError, match=message) as info:
        checkpointer.resume_or_load(str(path), resume=False)
    assert "unexpected in the checkpoint: 1 (encoder: 1; e.g. encoder.weight)" in str(info.value)
    assert f"Missing: {n} (backbone: 84, proposal_generator: 6, roi_heads: 8;" in str(info.value)


def test_retinanet_checkpoint_evaluated_as_faster_rcnn_is_refused(tmp_path, faster):
    cfg, _, _ = faster
    _, retina = _model(RETINA)
    D2AlignCheckpointer(retina, str(tmp_path)).save("retina")
    path = str(tmp_path / "retina.pth")
    _, target = _model(FASTER)
    expected = len(target.state_dict())
    checkpointer = D2AlignCheckpointer.from_config(cfg, target, eval_only=True)
    with pytest.raises(CheckpointMismatchError) as info:
        checkpointer.load(path)
    message = str(info.value)
    assert f"of the model's {expected} weights" in message
    assert "MIN_MATCHED_FRACTION_EVAL = 1.0" in message
    # The FPN differs (RetinaNet's P6/P7), the RPN and the box head are missing.
    assert "Missing: 20 (backbone: 6, proposal_generator: 6, roi_heads: 8;" in message
    assert "unexpected in the checkpoint: 160 (backbone: 4, head: 156;" in message

    # On purpose: the same file with the fraction set to 0 loads what fits.
    cfg0, _ = _model(FASTER, "D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_EVAL", "0.0")
    D2AlignCheckpointer.from_config(cfg0, target, eval_only=True).load(path)
    key = "backbone.bottom_up.stem.conv1.weight"
    torch.testing.assert_close(target.state_dict()[key], retina.state_dict()[key])


def test_eval_only_command_refuses_a_wrong_checkpoint(tmp_path):
    _, retina = _model(RETINA)
    D2AlignCheckpointer(retina, str(tmp_path)).save("retina")
    args = _args(FASTER, tmp_path / "out", "MODEL.WEIGHTS", str(tmp_path / "retina.pth"))
    with pytest.raises(CheckpointMismatchError, match="retina.pth: only"):
        main(args)


def test_finetuning_from_a_backbone_checkpoint_still_works(tmp_path, faster):
    _, source, _ = faster
    backbone = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.bottom_up")}
    path = tmp_path / "backbone.pth"
    torch.save({"model": backbone}, str(path))
    cfg, _ = _model(FASTER, "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "out"))
    cfg.DATASETS.TRAIN = ()  # the trainer's model only; no data is read here
    model = Trainer.build_model(cfg)
    checkpointer = D2AlignCheckpointer.from_config(cfg, model, str(tmp_path / "out"))
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)  # 60 of 98 entries: accepted
    for key, value in backbone.items():
        torch.testing.assert_close(model.state_dict()[key], value)
    # ... but evaluating with it would leave the heads untrained: refused.
    with pytest.raises(CheckpointMismatchError, match="60 of the model's 98 weights"):
        D2AlignCheckpointer.from_config(cfg, model, eval_only=True).load(str(path))


def test_trainer_uses_the_checked_checkpointer(tmp_path):
    from d2align.testing import register_tiny_shapes, tiny_training_config

    data = register_tiny_shapes(str(tmp_path / "data"), num_train=2, num_val=1, prefix="d2a_h14c")
    path = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, str(path))
    cfg = tiny_training_config(
        FASTER, str(tmp_path / "out"), data, max_iter=1, opts=["MODEL.WEIGHTS", str(path)]
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.checkpointer, D2AlignCheckpointer)
    with pytest.raises(CheckpointMismatchError, match="other.pth: only 0 of"):
        trainer.resume_or_load(resume=False)


def test_standalone_iou_net_evaluation_refuses_a_malicious_pkl(tmp_path):
    import argparse
    import importlib.util

    path = os.path.join(ROOT, "projects", "IoUNet", "evaluate_standalone.py")
    spec = importlib.util.spec_from_file_location("evaluate_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": _Touch(marker)}))
    args = argparse.Namespace(
        detector_config=os.path.join(ROOT, FASTER),
        detector_weights=str(evil),
        detector_opts=["MODEL.DEVICE", "cpu"],
        iounet_config=os.path.join(
            ROOT, "projects/IoUNet/configs/shapes/standalone_iounet_R18_FPN_scratch.yaml"
        ),
        iounet_weights=str(evil),
        iounet_opts=["MODEL.DEVICE", "cpu"],
        out=str(tmp_path / "out"),
    )
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        module.build_models(args)
    assert not marker.exists()


def test_non_finite_weights_are_refused_naming_the_file_and_the_tensor(tmp_path, faster):
    """A diverged run's checkpoint (NaN in one tensor) evaluated or trained from: refused, the
    message names the file and the first non-finite tensor, instead of AP 0 everywhere."""
    cfg, model, path = faster
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    later = list(state["model"])[-1]
    state["model"][name] = state["model"][name].clone()
    state["model"][name][0] = float("nan")
    state["model"][later] = torch.full_like(state["model"][later], float("inf"))
    bad = tmp_path / "diverged.pth"
    torch.save(state, str(bad))
    for eval_only in (True, False):
        checkpointer = D2AlignCheckpointer.from_config(cfg, model, eval_only=eval_only)
        with pytest.raises(ValueError, match=rf"diverged\.pth: weight '{name}' holds non-finite"):
            checkpointer.resume_or_load(str(bad), resume=False)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_empty_or_truncated_pth_names_the_file(tmp_path, faster, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken\.pth: not a readable checkpoint"):
        D2AlignCheckpointer(faster[1]).load(str(path))


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path, faster, monkeypatch):
    """A full disk during `save` (torch.save writes part of the file, then fails): the previous
    model_final.pth and last_checkpoint are intact, no partial file sits under a final name."""
    _, model, _ = faster
    checkpointer = D2AlignCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def full_disk(data, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_final")
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000099")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]
