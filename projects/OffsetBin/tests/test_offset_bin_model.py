"""Offset Bin Faster and Cascade R-CNN end to end: the shapes configs build the predictor in
every box stage, seeded regression values of the losses and detections of tiny models on a
fixed batch, zero-GT and all-background batches train without NaN, and on tiny embedded data
a few iterations lower the losses."""

import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.utils.events import EventStorage

from d2align.config import check_common_config
from d2align.engine import build_config
from d2align.projects.offset_bin import OffsetBinOutputLayers, add_offset_bin_config
from d2align.testing import (  # noqa: F401 (one_thread: a fixture)
    NO_OBJECT,
    ROOT,
    TWO_OBJECTS,
    noise_batch,
    one_thread,
    register_tiny_shapes,
    tiny_rcnn_opts,
    tiny_training_config,
    train_from_scratch,
)

SHAPES = "projects/OffsetBin/configs/shapes/"
FASTER = SHAPES + "bin_expectation_hierarchical_R18_FPN_scratch.yaml"
CASCADE = SHAPES + "cascade_bin_expectation_R18_FPN_scratch.yaml"
# the seeded regression models: random weights, narrow heads, few proposals
TINY = tiny_rcnn_opts(post_nms_topk_test=8)


def _fixed_batch():
    """Two 64 x 64 noise images, one with two objects and one with none."""
    return noise_batch(TWO_OBJECTS, NO_OBJECT)


def _seeded_model(config, sharp_bins=False, opts=()):
    """The tiny model of `config` (and `opts`) with seeded random weights; `sharp_bins`: bin
    logits of std about 1 instead of the near-uniform initial ones, so that the decoded boxes
    (and the later stages' targets) depend on them."""
    torch.manual_seed(0)
    cfg = build_config(os.path.join(ROOT, config), TINY + list(opts), [add_offset_bin_config])
    model = build_model(cfg)
    if sharp_bins:
        predictors = model.roi_heads.box_predictor
        for predictor in (
            predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]
        ):
            torch.nn.init.normal_(predictor.bbox_pred.weight, std=0.5)
    return model


def test_every_box_stage_has_the_bin_predictor():
    faster = _seeded_model(FASTER)
    predictor = faster.roi_heads.box_predictor
    assert type(predictor) is OffsetBinOutputLayers
    assert predictor.bin_coder.num_bins == [20, 20] and predictor.bin_coder.expectation
    cascade = _seeded_model(CASCADE)
    predictors = cascade.roi_heads.box_predictor
    assert [type(p) for p in predictors] == [OffsetBinOutputLayers] * 2
    assert [p.box2box_transform.weights for p in predictors] == [
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
    ]
    assert all(p.bin_coder.num_bins == [20] for p in predictors)
    assert [m.thresholds[1] for m in cascade.roi_heads.proposal_matchers] == [0.5, 0.7]


# values recorded from the models as of this file's commit; a change to the bins, their
# targets, the loss, the decoding or the box branch breaks them
EXPECTED_LOSSES = {
    FASTER: {
        "loss_cls": 1.9585946798324585,
        "loss_box_reg": 2.4036712646484375,
        "loss_rpn_cls": 0.6922492980957031,
        "loss_rpn_loc": 0.0037061646580696106,
    },
    CASCADE: {
        "loss_cls_stage0": 1.9585946798324585,
        "loss_box_reg_stage0": 1.4059900045394897,
        "loss_cls_stage1": 1.9269859790802002,
        "loss_box_reg_stage1": 0.8208376169204712,
        "loss_rpn_cls": 0.6922492980957031,
        "loss_rpn_loc": 0.0037061646580696106,
    },
}
# per image: detections, sum of scores, sum of box coordinates
EXPECTED_DETECTIONS = {
    FASTER: [(27, 3.8758206367492676, 3333.8583984375), (36, 5.162082672119141, 4284.19677734375)],
    CASCADE: [(34, 4.8651123046875, 4494.56494140625), (41, 5.855632781982422, 5008.22900390625)],
}


@pytest.mark.parametrize("config", [FASTER, CASCADE], ids=["faster", "cascade"])
@pytest.mark.usefixtures("one_thread")
def test_seeded_losses_and_detections_regression(config):
    model = _seeded_model(config, sharp_bins=True)
    batch = _fixed_batch()
    torch.manual_seed(1)  # proposal sampling
    with EventStorage():
        losses = model(batch)
    expected = EXPECTED_LOSSES[config]
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4), key
    model.eval()
    with torch.no_grad():
        outputs = model.inference(batch, do_postprocess=False)
    assert len(outputs) == len(EXPECTED_DETECTIONS[config])
    for out, (num, scores, coords) in zip(outputs, EXPECTED_DETECTIONS[config]):
        assert len(out) == num
        assert out.scores.sum().item() == pytest.approx(scores, rel=1e-4)
        assert out.pred_boxes.tensor.sum().item() == pytest.approx(coords, rel=1e-4)


BINS_AT_STAGE_1_ONLY = [
    "MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS",
    "['OffsetBinOutputLayers', 'FastRCNNOutputLayers']",
]


@pytest.mark.usefixtures("one_thread")
def test_bins_at_one_cascade_stage_only():
    """`MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS` gives each stage its own predictor: bins at
    stage 1, detectron2's regression at stage 2. Stage 1 is then exactly the all-bins
    cascade's (the same seeded weights, built first; the same sampled RoIs: the same losses),
    stage 2 trains a regression loss on the boxes stage 1 decoded."""
    mixed = _seeded_model(CASCADE, opts=BINS_AT_STAGE_1_ONLY)
    predictors = mixed.roi_heads.box_predictor
    assert [type(p) for p in predictors] == [OffsetBinOutputLayers, FastRCNNOutputLayers]
    assert predictors[1].box2box_transform.weights == (20.0, 20.0, 10.0, 10.0)
    assert predictors[1].bbox_pred.out_features == 4  # class-agnostic deltas, not bins
    losses = {}
    for name, model in (("mixed", mixed), ("bins", _seeded_model(CASCADE))):
        torch.manual_seed(1)  # proposal sampling
        with EventStorage():
            losses[name] = {k: v.item() for k, v in model(_fixed_batch()).items()}
    assert set(losses["mixed"]) == set(losses["bins"]) == set(EXPECTED_LOSSES[CASCADE])
    for key in ("loss_cls_stage0", "loss_box_reg_stage0", "loss_rpn_cls", "loss_rpn_loc"):
        assert losses["mixed"][key] == pytest.approx(losses["bins"][key], rel=1e-6), key
    stage2 = losses["mixed"]["loss_box_reg_stage1"]
    assert stage2 > 0 and stage2 != pytest.approx(losses["bins"]["loss_box_reg_stage1"])


def test_per_stage_predictors_are_checked():
    path = os.path.join(ROOT, CASCADE)
    one = ["MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS", "['OffsetBinOutputLayers']"]
    with pytest.raises(ValueError, match=r"PREDICTORS.*one predictor per stage"):
        build_model(build_config(path, TINY + one, [add_offset_bin_config]))
    unknown = ["MODEL.ROI_BOX_CASCADE_HEAD.PREDICTORS", "['OffsetBinOutputLayers', 'Bins']"]
    with pytest.raises(ValueError, match=r"PREDICTORS\[1\] = 'Bins'"):
        build_model(build_config(path, TINY + unknown, [add_offset_bin_config]))
    ignored = BINS_AT_STAGE_1_ONLY + ["MODEL.ROI_HEADS.NAME", "D2AlignStandardROIHeads"]
    cfg = build_config(path, TINY + ignored, [add_offset_bin_config])
    with pytest.raises(ValueError, match="PREDICTORS.*D2AlignStandardROIHeads' ignores it"):
        check_common_config(cfg)


@pytest.mark.parametrize("config", [FASTER, CASCADE], ids=["faster", "cascade"])
def test_zero_gt_and_all_background_batches_train_without_nan(config):
    model = _seeded_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    empty = noise_batch(NO_OBJECT, NO_OBJECT)
    for batch in (empty, _fixed_batch(), empty):
        with EventStorage():
            losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        if batch is empty:  # every proposal is background: no box loss at any stage
            box = [v.item() for k, v in losses.items() if k.startswith("loss_box_reg")]
            assert box and box == [0.0] * len(box)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


# CPU-test-sized training: narrow FPN and heads, few proposals, no flip (2 images to overfit)
SMALL = [
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "128",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "INPUT.RANDOM_FLIP", "none",
    "DATASETS.TEST", "()",
    "SOLVER.BASE_LR", "0.01",
    "SEED", "1",
]  # fmt: skip


class _RecordLosses(HookBase):
    """Total loss, and L_bin of the first box stage per foreground proposal (the logged loss
    is per sampled proposal, and the foreground share grows as the RPN learns)."""

    def __init__(self):
        self.total, self.box = [], []

    def after_step(self):
        storage = self.trainer.storage
        self.total.append(storage.history("total_loss").latest())
        box = [k for k in ("loss_box_reg", "loss_box_reg_stage0") if k in storage.histories()]
        fg = storage.history("roi_head/num_fg_samples").latest()
        bg = storage.history("roi_head/num_bg_samples").latest()
        self.box.append(storage.history(box[0]).latest() * (fg + bg) / max(fg, 1.0))


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.parametrize("config", [FASTER, CASCADE], ids=["faster", "cascade"])
def test_training_lowers_the_losses(config, tmp_path):
    name = "faster" if config == FASTER else "cascade"
    data = register_tiny_shapes(
        str(tmp_path / "data"), num_train=2, num_val=1, image_size=64,
        prefix=f"d2align_test_offset_bin_{name}",
    )  # fmt: skip
    cfg = tiny_training_config(
        config,
        str(tmp_path / "out"),
        data,
        max_iter=40,
        image_size=64,
        opts=SMALL,
        config_hooks=[add_offset_bin_config],
    )
    record = _RecordLosses()
    train_from_scratch(cfg, [record])
    assert all(torch.isfinite(torch.tensor(record.total)))
    first, last = _mean(record.total[:8]), _mean(record.total[-8:])
    # over 40 iterations (two runs each on 2 shared cores): total 0.56-0.66x (Faster),
    # 0.64-0.71x (Cascade) of its start; first-stage L_bin per foreground 0.63x, 0.79x
    assert last < 0.8 * first, (first, last)
    first, last = _mean(record.box[:8]), _mean(record.box[-8:])
    assert last < 0.9 * first, (first, last)
