"""Mixed precision, caught on the CPU: every headline config (each paper's full method and the
detectron2 baselines) trains one step and runs inference under autocast (bfloat16 on the CPU,
float16 on CUDA when a GPU is present) with finite losses and gradients and detections of the
right dtypes; `SOLVER.AMP.ENABLED` trains on the CPU with bfloat16 autocast (the loss falls
over a few iterations, as in float32)."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2align.engine import Trainer, build_config
from d2align.engine.amp import CPU_AMP_DTYPE, CPUAutocastTrainer
from d2align.projects import config_hooks_for
from d2align.testing import (  # noqa: F401 (one_thread: a fixture)
    ROOT,
    one_thread,
    randomize_retinanet_head,
    register_tiny_shapes,
    removed_after,
    shapes_batch,
    tiny_rcnn_opts,
    tiny_retinanet_opts,
    tiny_training_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# (config, one-stage?): the headline suite's rows, plus the Cascade variant of Offset Bin
HEADLINE = {
    "faster_rcnn": ("configs/shapes/faster_rcnn_R18_FPN_scratch.yaml", False),
    "retinanet": ("configs/shapes/retinanet_R18_FPN_scratch.yaml", True),
    "iou_net": ("projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml", False),
    "mutual_guidance": (
        "projects/MutualGuidance/configs/shapes/mutual_guidance_R18_FPN_scratch.yaml",
        True,
    ),
    "offset_bin": (
        "projects/OffsetBin/configs/shapes/bin_expectation_hierarchical_R18_FPN_scratch.yaml",
        False,
    ),
    "offset_bin_cascade": (
        "projects/OffsetBin/configs/shapes/cascade_bin_expectation_R18_FPN_scratch.yaml",
        False,
    ),
    "cpm_rcnn": ("projects/CPMRCNN/configs/shapes/cpm_rcnn_R18_FPN_scratch.yaml", False),
    "dc_loss": ("projects/DCLoss/configs/shapes/iac_dc_clnms_R18_FPN_scratch.yaml", True),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
AUTOCAST_DTYPE = {"cpu": CPU_AMP_DTYPE, "cuda": torch.float16}


def _model(name, device):
    rel, one_stage = HEADLINE[name]
    path = f"{ROOT}/{rel}"
    opts = tiny_retinanet_opts() if one_stage else tiny_rcnn_opts()
    cfg = build_config(path, opts + ["MODEL.DEVICE", device], config_hooks_for(path))
    torch.manual_seed(0)
    model = build_model(cfg)
    if one_stage:  # scores above the 0.05 threshold, so that the NMS has candidates
        randomize_retinanet_head(model, cls_bias=-1.5, cls_std=0.5, box_std=0.5)
    return model


def _batch(device):
    # 128 px, so that P7 is 2 x 2: oneDNN's bfloat16 weight gradient of a stride-2 conv on a
    # 1 x 1 input (P7 of a 64 px image) is intermittently non-finite on the CPU, a PyTorch
    # issue independent of this project (README, "Mixed precision"); the shapes data is 256 px
    batch = shapes_batch(image_size=128)
    for x in batch:
        x["image"] = x["image"].to(device)
        x["instances"] = x["instances"].to(device)
    return batch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(HEADLINE))
def test_one_training_step_under_autocast(name, device):
    model = _model(name, device).train()
    with torch.autocast(device, dtype=AUTOCAST_DTYPE[device]), EventStorage():
        losses = model(_batch(device))
        total = sum(losses.values())
    bad = {k: v.item() for k, v in losses.items() if not torch.isfinite(v)}
    assert not bad, bad
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    bad = [n for n, g in grads.items() if g.dtype != torch.float32 or not torch.isfinite(g).all()]
    assert grads and not bad, bad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(HEADLINE))
def test_inference_under_autocast(name, device):
    """Detections in the image, boxes in float32 (the precision of a pixel coordinate above
    256 px needs it), finite scores in [0, 1], and the same number of detections per image as
    the float32 model gives, within a few (bfloat16 moves scores near the thresholds)."""
    model = _model(name, device).eval()
    batch = [{"image": x["image"]} for x in _batch(device)]
    with torch.no_grad():
        reference = model(batch)
        with torch.autocast(device, dtype=AUTOCAST_DTYPE[device]):
            outputs = model(batch)
    assert sum(len(o["instances"]) for o in outputs) > 0
    for out, ref in zip(outputs, reference):
        inst = out["instances"]
        assert inst.pred_boxes.tensor.dtype == torch.float32
        assert inst.scores.is_floating_point() and torch.isfinite(inst.scores).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert inst.pred_classes.dtype == torch.int64
        assert abs(len(inst) - len(ref["instances"])) <= max(3, len(ref["instances"]) // 5)


def test_amp_enabled_trains_on_the_cpu_with_bfloat16(tmp_path):
    """SOLVER.AMP.ENABLED on the CPU: the bfloat16 autocast loop (not detectron2's CUDA-only
    AMPTrainer); its forward runs in bfloat16 (a conv output's dtype, recorded by a hook), the
    final evaluation in float32, and the loss of a Faster R-CNN on a tiny dataset falls over
    12 iterations."""
    data = register_tiny_shapes(str(tmp_path / "data"), num_train=4, num_val=2, image_size=64,
                                prefix="d2align_test_amp")  # fmt: skip
    with removed_after(data):
        cfg = tiny_training_config(
            "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml", str(tmp_path / "out"), data,
            max_iter=12, image_size=64,
            opts=["SOLVER.AMP.ENABLED", "True", "MODEL.FPN.OUT_CHANNELS", "32",
                  "SOLVER.BASE_LR", "0.01"],
        )  # fmt: skip
        trainer = Trainer(cfg)
        assert isinstance(trainer._trainer, CPUAutocastTrainer)
        dtypes = []
        stem = trainer.model.backbone.bottom_up.stem.conv1
        stem.register_forward_hook(lambda m, i, o: dtypes.append((m.training, o.dtype)))
        trainer.resume_or_load(resume=False)
        trainer.train()
        history = trainer.storage.history("total_loss").values()
    assert {d for training, d in dtypes if training} == {torch.bfloat16}
    assert {d for training, d in dtypes if not training} == {torch.float32}  # the evaluation
    losses = [v for v, _ in history]
    assert len(losses) == 12 and all(map(lambda v: v == v and abs(v) < 1e6, losses))
    assert sum(losses[-3:]) < sum(losses[:3])
