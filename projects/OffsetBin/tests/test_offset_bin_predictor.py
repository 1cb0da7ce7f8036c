"""OffsetBinOutputLayers, built through d2align's box-predictor registry: bin logits per class
or class-agnostic, L_bin on a hand-worked example with lambda_bin, decoded boxes (one-hot
bins recover the ground truth, expectation decoding is differentiable and monotone in the
outer bins' logits), all-background batches, and config errors naming the key."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from d2align.modeling import build_box_predictor
from d2align.modeling.bin_coder import bin_width
from d2align.projects.offset_bin import OffsetBinOutputLayers, add_offset_bin_config

FEATURES = 8


def _cfg(*opts):
    cfg = get_cfg()
    add_offset_bin_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.ROI_BOX_HEAD.PREDICTOR",
            "OffsetBinOutputLayers",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "3",
        ]
        + list(opts)
    )
    return cfg


def _predictor(*opts, dtype=torch.float32):
    torch.manual_seed(0)
    return build_box_predictor(_cfg(*opts), ShapeSpec(channels=FEATURES)).to(dtype)


def _proposals(boxes, gt_boxes=None, gt_classes=None, size=(200, 200)):
    inst = Instances(size)
    inst.proposal_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float64).view(-1, 4))
    if gt_boxes is not None:
        inst.gt_boxes = Boxes(torch.as_tensor(gt_boxes, dtype=torch.float64).view(-1, 4))
    if gt_classes is not None:
        inst.gt_classes = torch.as_tensor(gt_classes, dtype=torch.int64)
    return inst


def test_registered_and_sized_per_class_or_class_agnostic():
    agnostic = _predictor("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True")
    per_class = _predictor()
    assert type(agnostic) is OffsetBinOutputLayers
    assert agnostic.bin_coder.num_bins == [20, 20]
    assert agnostic.bin_coder.offset_ranges == [3.0, 0.15]
    assert agnostic.bin_coder.expectation
    # 4 offsets x (20 + 20) bins, once or for each of the 3 classes; classification unchanged
    assert agnostic.bbox_pred.out_features == 4 * 40
    assert per_class.bbox_pred.out_features == 3 * 4 * 40
    assert agnostic.cls_score.out_features == per_class.cls_score.out_features == 4
    scores, logits = per_class(torch.randn(5, FEATURES))
    assert scores.shape == (5, 4) and logits.shape == (5, 480)
    assert per_class.decode_deltas(logits).shape == (5, 12)
    assert per_class.decode_deltas(logits[:0]).shape == (0, 12)  # no proposals


# proposal (0, 0, 10, 10) and a ground truth whose deltas (weights 1) are (0.3, -2, 0.99, -0.2)
PROPOSAL = [0.0, 0.0, 10.0, 10.0]
_W, _H = 10 * math.exp(0.99), 10 * math.exp(-0.2)
GT = [8.0 - _W / 2, -15.0 - _H / 2, 8.0 + _W / 2, -15.0 + _H / 2]


@pytest.mark.parametrize("agnostic", [True, False])
def test_loss_on_a_hand_worked_example(agnostic):
    # n = 4 bins over a = 1: the deltas' labels are 1, 2 (outer, <= -1), 1, 0; every offset's
    # logits give p = (0.1, 0.2, 0.3, 0.4); 2 sampled proposals, 1 foreground
    predictor = _predictor(
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", str(agnostic),
        "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "(1.0, 1.0, 1.0, 1.0)",
        "MODEL.OFFSET_BIN.NUM_BINS", "4",
        "MODEL.OFFSET_BIN.OFFSET_RANGE", "1.0",
        "MODEL.OFFSET_BIN.NUM_STAGES", "1",
        "MODEL.OFFSET_BIN.FOCUS_RANGES", "[]",
        "MODEL.OFFSET_BIN.LOSS_WEIGHT", "2.0",
        dtype=torch.float64,
    )  # fmt: skip
    proposals = _proposals([PROPOSAL, PROPOSAL], [GT, GT], [1, 3])
    log_p = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    classes = 1 if agnostic else 3
    logits = torch.randn(2, classes, 4, 4, dtype=torch.float64) * 5  # only GT class 1 counts
    logits[0, 0 if agnostic else 1] = log_p
    scores = torch.randn(2, 4, dtype=torch.float64)
    with EventStorage():
        losses = predictor.losses((scores, logits.view(2, -1)), [proposals])
    ce = -(math.log(0.2) + math.log(0.3) + math.log(0.2) + math.log(0.1))
    assert losses["loss_box_reg"].item() == pytest.approx(2.0 * ce / 2, rel=1e-10)
    expected_cls = torch.nn.functional.cross_entropy(scores, torch.tensor([1, 3]))
    assert losses["loss_cls"].item() == pytest.approx(expected_cls.item(), rel=1e-10)


def _one_hot_predictions(predictor, proposals, gt):
    """Bin logits one-hot at each stage's true label of the offsets from proposals to gt."""
    coder = predictor.bin_coder
    targets = predictor.box2box_transform.get_deltas(proposals, gt)  # (R, 4)
    logits = torch.zeros(len(targets), 4, coder.total_bins, dtype=torch.float64)
    start = 0
    for k, n in enumerate(coder.num_bins):
        labels = coder.encode(targets, logits)[..., k]
        logits[..., start : start + n] = torch.nn.functional.one_hot(labels, n) * 1e4
        start += n
    return logits.view(len(targets), -1), targets


def test_one_hot_bins_decode_to_the_ground_truth_box():
    predictor = _predictor("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True", dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=generator, dtype=torch.float64) * 100
    wh = torch.rand(50, 2, generator=generator, dtype=torch.float64) * 60 + 10
    proposals = torch.cat([xy, xy + wh], dim=1)
    # ground truth shifted by < 0.25 of the size and scaled by < e^0.5: inside (-a, a)
    shift = (torch.rand(50, 2, generator=generator, dtype=torch.float64) - 0.5) * 0.5 * wh
    scale = torch.exp((torch.rand(50, 2, generator=generator, dtype=torch.float64) - 0.5))
    centre, size = xy + wh / 2 + shift, wh * scale
    gt = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    logits, targets = _one_hot_predictions(predictor, proposals, gt)
    assert targets.abs().max() < 3.0
    deltas = predictor.decode_deltas(logits)
    # K = 2 stages: within a stage-2 bin width w / n2 of the target in delta units
    assert (deltas - targets).abs().max() <= bin_width(20, 3.0) / 20 + 1e-9
    (boxes,) = predictor.predict_boxes((None, logits), [_proposals(proposals)])
    assert pairwise_iou(Boxes(boxes), Boxes(gt)).diag().min() > 0.99


def test_expectation_boxes_are_differentiable_and_monotone_in_the_outer_bins_logits():
    predictor = _predictor(
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True",
        "MODEL.OFFSET_BIN.NUM_STAGES", "1",
        "MODEL.OFFSET_BIN.FOCUS_RANGES", "[]",
        dtype=torch.float64,
    )  # fmt: skip
    proposals = [_proposals([[20.0, 30.0, 70.0, 60.0]])]
    base = torch.randn(1, 4, 20, dtype=torch.float64)
    lower, upper = 18, 19  # labels m (-inf, -a] and m + 1 [a, inf)

    def box(offset, bin_, logit):
        logits = base.clone()
        logits[0, offset, bin_] = logit
        return predictor.predict_boxes((None, logits.view(1, -1)), proposals)[0][0]

    sweep = torch.linspace(-6, 6, 25, dtype=torch.float64)
    for offset, measure in ((0, lambda b: b[0] + b[2]), (2, lambda b: b[2] - b[0])):
        # tx's outer bins move the centre, tw's the width: up with the upper outer bin's
        # logit, down with the lower's
        for bin_, sign in ((upper, 1), (lower, -1)):
            values = torch.stack([measure(box(offset, bin_, v)) for v in sweep])
            assert bool((sign * values.diff() > 0).all()), (offset, bin_)

    # the deltas are a smooth function of the logits (detectron2's apply_deltas, which decodes
    # in float32, then maps them to the box), and the gradient's signs are those of the sweep
    logits = base.clone().view(1, -1).requires_grad_(True)
    assert torch.autograd.gradcheck(predictor.decode_deltas, (logits,))
    box_ = predictor.predict_boxes((None, logits), proposals)[0][0]
    (grad,) = torch.autograd.grad(box_[0] + box_[2], logits)
    grad = grad.view(4, 20)
    assert grad[0, upper] > 0 and grad[0, lower] < 0


def test_argmax_decoding_is_the_best_bins_representative():
    predictor = _predictor(
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True", "MODEL.OFFSET_BIN.DECODE", "argmax"
    )
    logits = torch.zeros(1, 4, 40)
    logits[0, :, 5] = 1.0  # stage 1: bin 5, centre -3 + 5.5 / 3
    logits[0, :, 20 + 19] = 1.0  # stage 2: upper outer bin, +0.15
    deltas = predictor.decode_deltas(logits.view(1, -1))
    assert torch.allclose(deltas, torch.full((1, 4), -3 + 5.5 / 3 + 0.15))


def test_boxes_for_gt_classes_are_the_gt_class_columns():
    predictor = _predictor()
    logits = torch.randn(3, 480)
    proposals = _proposals([PROPOSAL] * 3, [GT] * 3, [2, 0, 3])  # 3 = background -> class 2
    (per_class,) = predictor.predict_boxes((None, logits), [proposals])
    (for_gt,) = predictor.predict_boxes_for_gt_classes((None, logits), [proposals])
    rows = torch.arange(3)
    assert torch.equal(for_gt, per_class.view(3, 3, 4)[rows, torch.tensor([2, 0, 2])])


def test_all_background_batch_has_zero_box_loss_and_finite_gradients():
    predictor = _predictor()
    features = torch.randn(4, FEATURES)
    predictions = predictor(features)
    # an image without ground truth: no gt_boxes field, every proposal background
    proposals = [_proposals([PROPOSAL] * 4, gt_classes=[3, 3, 3, 3])]
    with EventStorage():
        losses = predictor.losses(predictions, proposals)
    assert losses["loss_box_reg"].item() == 0.0
    sum(losses.values()).backward()
    for p in predictor.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert predictor.bbox_pred.weight.grad.abs().max() == 0
    assert predictor.cls_score.weight.grad.abs().max() > 0


W1 = bin_width(20, 3.0)


@pytest.mark.parametrize(
    "opts, key",
    [
        (["MODEL.OFFSET_BIN.NUM_BINS", "2"], "MODEL.OFFSET_BIN.NUM_BINS"),
        (["MODEL.OFFSET_BIN.OFFSET_RANGE", "0.0"], "MODEL.OFFSET_BIN.OFFSET_RANGE"),
        (["MODEL.OFFSET_BIN.OFFSET_RANGE", "-1.0"], "MODEL.OFFSET_BIN.OFFSET_RANGE"),
        (
            ["MODEL.OFFSET_BIN.NUM_STAGES", "0", "MODEL.OFFSET_BIN.FOCUS_RANGES", "[]"],
            "MODEL.OFFSET_BIN.NUM_STAGES",
        ),
        (["MODEL.OFFSET_BIN.FOCUS_RANGES", f"[{W1}]"], "MODEL.OFFSET_BIN.FOCUS_RANGES"),
        (["MODEL.OFFSET_BIN.FOCUS_RANGES", "[0.0]"], "MODEL.OFFSET_BIN.FOCUS_RANGES"),
        (["MODEL.OFFSET_BIN.NUM_STAGES", "3"], "MODEL.OFFSET_BIN.FOCUS_RANGES"),
        (["MODEL.OFFSET_BIN.DECODE", "median"], "MODEL.OFFSET_BIN.DECODE"),
        (["MODEL.OFFSET_BIN.LOSS_WEIGHT", "-1.0"], "MODEL.OFFSET_BIN.LOSS_WEIGHT"),
    ],
)
def test_bad_config_is_refused_naming_the_key(opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _predictor(*opts)


def test_a_second_stage_range_just_under_the_stage1_bin_width_is_accepted():
    predictor = _predictor("MODEL.OFFSET_BIN.FOCUS_RANGES", f"[{W1 * 0.999}]")
    assert predictor.bin_coder.offset_ranges[1] == pytest.approx(W1 * 0.999)
