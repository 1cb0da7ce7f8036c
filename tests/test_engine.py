"""The shared trainer: loss falls, a stopped run resumes, empty images train, config checks."""

import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase

from d2align.engine import Trainer, check_num_classes
from d2align.testing import register_tiny_shapes, tiny_training_config

FASTER = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
RETINA = "configs/shapes/retinanet_R18_FPN_scratch.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_shapes")
    return register_tiny_shapes(str(root), num_train=6, num_val=3, prefix="d2align_test_engine")


@pytest.fixture(scope="module")
def empty_data(tmp_path_factory):
    """Training images without objects except a few (a set with none is refused, below)."""
    root = tmp_path_factory.mktemp("empty_shapes")
    names = register_tiny_shapes(
        str(root), num_train=8, num_val=2, prefix="d2align_test_empty", empty_fraction=0.75
    )
    counts = [len(r["annotations"]) for r in DatasetCatalog.get(names[0])]
    assert counts.count(0) >= 4 and sum(counts) > 0, counts  # seeded
    return names


@pytest.fixture(scope="module")
def no_object_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_object_shapes")
    return register_tiny_shapes(
        str(root), num_train=4, num_val=2, prefix="d2align_test_no_object", empty_fraction=1.0
    )


@pytest.mark.slow
def test_loss_falls(tiny_data, tmp_path):
    # Overfit 6 images with the Faster R-CNN baseline: the mean loss of the last 8 iterations is
    # well below that of the first 8. (RetinaNet's loss starts artificially low, from its
    # prior-probability bias, so "falls from iteration 0" is not a property it has.)
    cfg = tiny_training_config(
        FASTER, str(tmp_path), tiny_data, max_iter=40, opts=["SOLVER.BASE_LR", "0.01"]
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    history = []

    class Record(HookBase):
        def after_step(self):
            history.append(self.trainer.storage.history("total_loss").latest())

    trainer.register_hooks([Record()])
    trainer.train()
    assert all(torch.isfinite(torch.tensor(history)))
    first, last = sum(history[:8]) / 8, sum(history[-8:]) / 8
    assert last < 0.7 * first, (first, last)


class _StopAt(HookBase):
    """Simulates a killed run: raises after iteration `it` finished (checkpoints included)."""

    def __init__(self, it):
        self.it = it

    def after_step(self):
        if self.trainer.iter == self.it:
            raise KeyboardInterrupt


def test_resume_restores_iteration_and_optimizer(tiny_data, tmp_path):
    cfg = tiny_training_config(
        FASTER, str(tmp_path), tiny_data, max_iter=8, opts=["SOLVER.CHECKPOINT_PERIOD", "3"]
    )
    trainer = Trainer(cfg)
    trainer.register_hooks([_StopAt(4)])  # after the PeriodicCheckpointer of iteration 2
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    ckpt_path = os.path.join(str(tmp_path), "model_0000002.pth")
    assert os.path.exists(ckpt_path)
    with open(os.path.join(str(tmp_path), "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000002.pth"
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # plain tensors/dicts

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3  # continues after the checkpointed iteration 2
    state = resumed.optimizer.state_dict()
    saved_optimizer = saved["trainer"]["_trainer"]["optimizer"]
    assert len(saved_optimizer["state"]) > 0  # momentum buffers were saved
    assert state["state"].keys() == saved_optimizer["state"].keys()
    for key, value in saved_optimizer["state"].items():
        torch.testing.assert_close(state["state"][key]["momentum_buffer"], value["momentum_buffer"])
    model_state = resumed.model.state_dict()
    for key, value in saved["model"].items():
        torch.testing.assert_close(model_state[key], value)
    saved_scheduler = saved["trainer"]["hooks"]["LRScheduler"]
    assert resumed.scheduler.last_epoch == saved_scheduler["last_epoch"] == 3


@pytest.mark.parametrize("config", [FASTER, RETINA])
def test_images_without_objects_train(config, empty_data, tmp_path):
    cfg = tiny_training_config(config, str(tmp_path), empty_data, max_iter=3)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # evaluates at the end too: a val set without objects
    loss = trainer.storage.history("total_loss").latest()
    assert torch.isfinite(torch.tensor(loss))


def test_a_training_set_without_any_object_is_refused(no_object_data, tmp_path):
    """Every image empty: nothing to learn; refused naming the dataset and its JSON file."""
    cfg = tiny_training_config(FASTER, str(tmp_path), no_object_data, max_iter=3)
    with pytest.raises(ValueError, match="'d2align_test_no_object_train' .* no annotation"):
        Trainer(cfg)


def test_num_classes_mismatch_names_the_key(tiny_data, tmp_path):
    cfg = tiny_training_config(
        FASTER, str(tmp_path), tiny_data, opts=["MODEL.ROI_HEADS.NUM_CLASSES", "3"]
    )
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES"):
        check_num_classes(cfg)


def test_inference_timer_waits_for_the_device(monkeypatch):
    """On CUDA the forward returns before its kernels finish: the timer synchronizes before
    reading the clock. A stand-in device whose queued work takes 20 ms per forward and is only
    waited for by `torch.cuda.synchronize`: the timer counts it on "cuda", not on the CPU."""
    import time

    from d2align.engine.trainer import _ForwardTimer

    pending = []

    class AsyncModel(torch.nn.Module):
        def forward(self, batch):
            pending.append(0.02)  # work queued on the device, not yet done
            return batch

    def synchronize():
        while pending:
            time.sleep(pending.pop())

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    for device, waits in (("cuda", True), ("cpu", False)):
        pending.clear()
        timer = _ForwardTimer(AsyncModel(), warmup=0, device=device)
        for _ in range(3):
            timer([None])
        assert (timer.seconds_per_image() >= 0.02) == waits, device


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback happens without CUDA")
def test_cuda_config_on_a_machine_without_cuda_says_so(caplog):
    from d2align.engine import build_config

    with caplog.at_level("WARNING", logger="d2align"):
        cfg = build_config("", ["MODEL.DEVICE", "cuda"])
    assert cfg.MODEL.DEVICE == "cpu"
    (record,) = [r for r in caplog.records if "MODEL.DEVICE" in r.getMessage()]
    assert "'cuda'" in record.getMessage() and "CPU" in record.getMessage()


def test_a_diverging_training_names_the_keys_that_scale_it(tiny_data, tmp_path):
    """A learning rate far too large (or a huge loss weight) makes the loss infinite within a
    few steps: detectron2's FloatingPointError now also names the keys that set the step and
    the losses' scale, with their values, instead of only "Training has diverged"."""
    cfg = tiny_training_config(
        FASTER,
        str(tmp_path),
        tiny_data,
        max_iter=20,
        image_size=64,
        opts=["SOLVER.BASE_LR", "1e12", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", "3e4"],
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as raised:
        trainer.train()
    message = str(raised.value)
    # detectron2's own words stay ("Loss became infinite or NaN", or the RPN's "Predicted boxes
    # or scores contain Inf/NaN. Training has diverged.", whichever comes first)
    assert "infinite or NaN" in message or "Training has diverged" in message
    assert "SOLVER.BASE_LR=1000000000000.0" in message
    assert "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT=30000.0" in message
    assert "MODEL.PIXEL_STD=" in message
