"""DCLossRetinaNet on a tiny CPU model: configs, refused keys, Table 2's baseline is detectron2's
RetinaNet, IAC and DC change what the paper says they change, CL-balanced NMS equals the
reference of d2align.ops on the model's candidates, seeded losses, training lowers the loss."""

import copy
import glob
import os

import pytest
import torch
from detectron2.layers import batched_nms, cat
from detectron2.modeling import RetinaNet, build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from d2align.engine import build_config
from d2align.ops import cl_balanced_nms_reference
from d2align.projects.dc_loss import (
    DCLossRetinaNet,
    add_dc_loss_config,
    dynamic_coefficient,
    normalize_coefficient,
)
from d2align.testing import (  # noqa: F401 (one_thread: a fixture)
    RecordPerClassNMS,
    gt_instances,
    one_thread,
    overfit_retinanet,
    randomize_retinanet_head,
    recorded_sgd_losses,
    shapes_batch,
    tiny_retinanet_opts,
    train_and_evaluate_on_tiny_shapes,
)

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(PROJECT, "configs", "shapes")
SIZE = 64  # tiny images: P3..P7 = 8x8 .. 1x1 cells
ROWS = ("retinanet", "iac", "iac_dc", "iac_dc_clnms")  # Table 2's four rows


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_cfg(row="iac_dc_clnms", opts=()):
    config = os.path.join(SHAPES, f"{row}_R18_FPN_scratch.yaml")
    # three scales per level (THREE_SCALE_ANCHORS): candidates of one location overlap (NMS
    # clusters), and small anchors lie inside the objects (IAC's intersection / smaller area = 1)
    return build_config(config, tiny_retinanet_opts() + list(opts), [add_dc_loss_config])


def _randomize_head(model, cls_bias=-2.0, cls_std=1.0):
    """Seeded output layers: scores and regressed boxes vary over anchors (cls_bias: mean
    logit; cls_std: spread of the class biases; regression biases of spread 0.2)."""
    randomize_retinanet_head(model, cls_bias, cls_std, box_std=0.2)


def _dense(model, batch):
    """(anchors, logits, deltas, gt_instances) as forward_training sees them."""
    images = model.preprocess_image(batch)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    logits, deltas = model._transpose_dense_predictions(model.head(features), [6, 4])
    gts = [x["instances"] for x in batch]
    return model.anchor_generator(features), logits, deltas, gts


# ---- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", sorted(glob.glob(os.path.join(PROJECT, "configs", "**", "*.yaml"), recursive=True))
)
def test_config_merges_and_builds(config):
    cfg = build_config(config, [], [add_dc_loss_config])
    assert cfg.MODEL.META_ARCHITECTURE == "DCLossRetinaNet"
    name = os.path.basename(config)
    baseline = name.startswith("retinanet_")
    assert cfg.MODEL.DC_LOSS.IAC.ENABLED == (not baseline)
    assert cfg.MODEL.DC_LOSS.DC.ENABLED == (not baseline and not name.startswith("iac_R18"))
    cl_nms = "clnms" in name or name.startswith(("Base", "dc_loss_"))
    assert cfg.MODEL.D2ALIGN_RETINANET.NMS_TYPE == ("cl_balanced" if cl_nms else "standard")
    if "/shapes/" in config:
        model = build_model(cfg)
        assert isinstance(model, DCLossRetinaNet)
        assert model.iac_alpha == cfg.MODEL.DC_LOSS.IAC.ALPHA


def test_output_dirs_are_distinct():
    configs = glob.glob(os.path.join(PROJECT, "configs", "**", "*.yaml"), recursive=True)
    dirs = [
        build_config(c, [], [add_dc_loss_config]).OUTPUT_DIR
        for c in configs
        if not os.path.basename(c).startswith("Base")
    ]
    assert len(set(dirs)) == len(dirs)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("MODEL.DC_LOSS.IAC.ALPHA", "1.5", "MODEL.DC_LOSS.IAC.ALPHA = 1.5"),
        ("MODEL.DC_LOSS.IAC.ALPHA", "-0.1", "MODEL.DC_LOSS.IAC.ALPHA"),
        ("MODEL.DC_LOSS.IAC.SCORE_THRESH", "0.0", "MODEL.DC_LOSS.IAC.SCORE_THRESH"),
        ("MODEL.DC_LOSS.IAC.SCORE_THRESH", "1.2", "MODEL.DC_LOSS.IAC.SCORE_THRESH"),
        ("MODEL.DC_LOSS.IAC.PROMOTE", "negatives", "MODEL.DC_LOSS.IAC.PROMOTE"),
        ("MODEL.DC_LOSS.DC.EPS", "-1e-6", "MODEL.DC_LOSS.DC.EPS"),
        ("MODEL.RETINANET.IOU_THRESHOLDS", "[0.5, 0.4]", "MODEL.RETINANET.IOU_THRESHOLDS"),
        ("MODEL.RETINANET.IOU_LABELS", "[0, 1, 1]", "MODEL.RETINANET.IOU_LABELS"),
        ("MODEL.D2ALIGN_RETINANET.NMS_TYPE", "cl", "MODEL.D2ALIGN_RETINANET.NMS_TYPE"),
    ],
)
def test_bad_config_names_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        build_model(_tiny_cfg(opts=[key, value]))


# ---- training --------------------------------------------------------------------------------


def test_baseline_row_is_detectron2_retinanet():
    """Table 2's baseline config (both components off): detectron2's RetinaNet's losses and
    gradients, bit for bit, with the same weights."""
    torch.manual_seed(0)
    cfg = _tiny_cfg("retinanet")
    model = build_model(cfg)
    _randomize_head(model)
    reference = RetinaNet(cfg)
    reference.load_state_dict(model.state_dict())
    batch = shapes_batch()
    # fvcore's focal loss is TorchScript: its first calls (profiling runs) and the optimised
    # later ones differ in the last bit of the backward, so both models run after a warm-up
    warm_up = copy.deepcopy(reference)
    for _ in range(2):
        with EventStorage():
            sum(warm_up(batch).values()).backward()
    with EventStorage():
        ours, theirs = model(batch), reference(batch)
        sum(ours.values()).backward()
        sum(theirs.values()).backward()
    for key in ("loss_cls", "loss_box_reg"):
        assert torch.equal(ours[key], theirs[key]), key
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a.grad, b.grad), name


def _labels(model, batch):
    """(labels (N, R), regression masks (N, R), logged promoted anchors per image or None)."""
    with torch.no_grad(), EventStorage() as storage:
        anchors, logits, deltas, gts = _dense(model, batch)
        labels, _, reg_masks = model.assign_anchors(anchors, gts, logits, deltas)
    promoted = storage.latest().get("num_iac_promoted_anchors")
    return torch.stack(labels), torch.stack(reg_masks), promoted and promoted[0]


def test_iac_starts_as_the_static_rule_and_adds_confident_anchors():
    """At the focal-loss prior (p^ = 0.01) no anchor reaches s >= 0.6, so IAC gives the
    baseline's labels. With confident scores (mean logit 2) it keeps every baseline positive
    and turns some negative or ignored anchors positive; regression follows the positives."""
    torch.manual_seed(0)
    iac, static = build_model(_tiny_cfg("iac")), build_model(_tiny_cfg("retinanet"))
    static.load_state_dict(iac.state_dict())
    batch = shapes_batch()
    iac_labels, _, promoted = _labels(iac, batch)
    static_labels, _, _ = _labels(static, batch)
    assert torch.equal(iac_labels, static_labels) and promoted == 0
    for model in (iac, static):
        _randomize_head(model, cls_bias=2.0, cls_std=0.1)
    iac_labels, iac_reg, promoted = _labels(iac, batch)
    static_labels, _, _ = _labels(static, batch)
    fg, static_fg = (iac_labels >= 0) & (iac_labels < 6), (static_labels >= 0) & (static_labels < 6)
    assert torch.equal(iac_labels[static_fg], static_labels[static_fg])
    assert fg.sum() > static_fg.sum()
    assert promoted == (fg.sum() - static_fg.sum()).item() / len(batch)
    assert torch.equal(iac_reg, fg)


def test_dc_reweights_positives_without_changing_the_loss_value():
    """Eq. 2-3: the DC loss has the value of the unweighted focal loss (the positives' weighted
    sum is their unweighted sum; negatives are unweighted), but the gradient of a positive's
    logits is lambda'_i times the unweighted one, and nothing flows to the box deltas."""
    torch.manual_seed(0)
    # promote "any": positives on the first (finest) level, whose gradient is checked below
    model = build_model(_tiny_cfg("iac_dc", ("MODEL.DC_LOSS.IAC.PROMOTE", "any")))
    _randomize_head(model)
    batch = shapes_batch()
    with EventStorage():
        anchors, logits, deltas, gts = _dense(model, batch)
        labels, boxes, _ = model.assign_anchors(anchors, gts, logits, deltas)
        labels = torch.stack(labels)
        logits = [x.detach().requires_grad_() for x in logits]
        deltas = [x.detach().requires_grad_() for x in deltas]
        weighted = model.classification_loss(anchors, logits, labels, deltas, boxes)
        model.dc_enabled = False
        plain = model.classification_loss(anchors, logits, labels, deltas, boxes)
    torch.testing.assert_close(weighted, plain)
    (weighted_grad,) = torch.autograd.grad(weighted, logits[0], retain_graph=True)
    (plain_grad,) = torch.autograd.grad(plain, logits[0])
    assert torch.autograd.grad(weighted, deltas, allow_unused=True) == (None,) * len(deltas)
    # lambda' by hand from the pure functions, on the first level's positives
    positive = (labels >= 0) & (labels < 6)
    pred = model.box2box_transform.apply_deltas(
        cat(deltas, 1).detach()[positive],
        Boxes.cat(anchors).tensor.expand(len(labels), -1, -1)[positive],
    )
    lam = dynamic_coefficient(pred, torch.stack(boxes)[positive], model.dc_eps)
    per_anchor = model.focal_loss_per_anchor(logits, labels).detach()
    lam_prime = torch.ones_like(per_anchor)
    lam_prime[positive] = normalize_coefficient(lam, per_anchor[positive])
    level0 = lam_prime[:, : logits[0].shape[1], None]
    assert (positive[:, : logits[0].shape[1]]).any()
    torch.testing.assert_close(weighted_grad, plain_grad * level0)
    assert not torch.allclose(weighted_grad, plain_grad)


ITERATIONS = 20


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS)
def test_loss_falls(row):
    """SGD steps on one fixed batch lower the total loss, in each of Table 2's configs (rows 3
    and 4 train alike: CL-balanced NMS runs at inference only), from a head whose scores make
    IAC promote anchors (at the focal-loss prior, rows 1 and 2 would train alike)."""
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(row))
    _randomize_head(model, cls_bias=0.0)  # scores of about 0.5: IAC promotes anchors
    initial, final, totals = overfit_retinanet(model, shapes_batch(), ITERATIONS)
    assert torch.isfinite(totals).all()
    # measured: 0.006 (row 1) to 0.012 (rows 2-4) of the initial loss
    assert final < 0.1 * initial, (initial, final)


# (loss_cls, loss_box_reg) at the first step and after two SGD steps, recorded with this code
# (score_threshold 0.6), one thread. The randomized head's scores (mean logit 0) make IAC add
# positives: with the default rule (promote "ignored") a few anchors of the ignored band (row
# 2's regression loss 1.4x row 1's); with promote "any" many more (50x: large anchors that
# contain an object have intersection / smaller area 1, whatever their IoU). DC (row 3) has row
# 2's first losses (eq. 2 keeps the value) and then other gradients.
REGRESSION = {
    ("retinanet", ()): [
        (9.923897743225098, 0.07242027670145035),
        (10.363466262817383, 0.08205679804086685),
    ],
    ("iac", ()): [
        (9.92800521850586, 0.09985404461622238),
        (10.321813583374023, 0.11368948221206665),
    ],
    ("iac_dc", ()): [
        (9.92800521850586, 0.09985404461622238),
        (10.315425872802734, 0.11346171796321869),
    ],
    ("iac_dc", ("MODEL.DC_LOSS.IAC.PROMOTE", "any")): [
        (8.185585975646973, 3.8100621700286865),
        (7.002285480499268, 3.3630685806274414),
    ],
}


@pytest.mark.parametrize("row,opts", sorted(REGRESSION))
def test_seeded_regression_values(row, opts):
    """Losses of a seeded tiny model on one fixed batch equal recorded values: a change to the
    assignment, the DC weighting or the normalisation breaks this."""
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(row, opts))
    _randomize_head(model, cls_bias=0.0)
    measured = recorded_sgd_losses(model, shapes_batch())
    for got, want in zip(measured, REGRESSION[row, opts]):
        assert got == pytest.approx(want, rel=1e-4), (row, opts, measured)


@pytest.mark.parametrize("row", ["iac", "iac_dc"])
def test_losses_finite_on_edge_cases(row):
    """Zero-GT image, a GT smaller than every anchor, two GTs competing for one anchor; with
    confident scores so that IAC promotes anchors."""
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(row))
    _randomize_head(model, cls_bias=2.0, cls_std=0.1)
    model.train()
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE, generator=generator) * 255 for _ in range(3)]
    gts = [
        gt_instances([], []),
        gt_instances([[30.0, 30.0, 32.0, 32.0]], [4]),
        gt_instances([[0.0, 0.0, 4.0, 8.0], [0.0, 0.0, 8.0, 3.0]], [0, 1]),
    ]
    batch = [{"image": im, "instances": gt} for im, gt in zip(images, gts)]
    with EventStorage():
        losses = model(batch)
        sum(losses.values()).backward()
        empty = model(batch[:1])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] > 0
    assert (
        empty["loss_box_reg"] == 0 and torch.isfinite(empty["loss_cls"]) and empty["loss_cls"] > 0
    )
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---- inference -------------------------------------------------------------------------------


class _RecordingNMS(RecordPerClassNMS, DCLossRetinaNet):
    """Records the candidates and a copy of the detections of every `per_class_nms` call."""


NMS_THRESH = 0.3


def test_cl_balanced_nms_equals_the_reference_on_the_models_candidates():
    """Row 4's NMS: on the model's own candidates, the detections are those of
    d2align.ops.cl_balanced_nms_reference (the same clusters as standard NMS, another box for
    some), with the classification scores."""
    torch.manual_seed(0)
    opts = ["MODEL.RETINANET.NMS_THRESH_TEST", str(NMS_THRESH), "TEST.DETECTIONS_PER_IMAGE", "2000"]
    model = _RecordingNMS(_tiny_cfg("iac_dc_clnms", opts))
    _randomize_head(model, cls_bias=-3.0, cls_std=0.5)
    model.eval().records = []
    with torch.no_grad():
        model([{"image": x["image"]} for x in shapes_batch()])
    assert len(model.records) == 2
    differs = []
    for cands, dets in model.records:
        boxes, scores, classes = cands.pred_boxes.tensor, cands.scores, cands.pred_classes
        assert len(boxes) > 50
        keep, _ = cl_balanced_nms_reference(boxes, scores, classes, NMS_THRESH, 1.0, 1.0)
        keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]  # by p
        assert torch.equal(dets.pred_boxes.tensor, boxes[keep])
        assert torch.equal(dets.scores, scores[keep])
        standard = batched_nms(boxes, scores, classes, NMS_THRESH)
        assert len(keep) == len(standard)
        differs.append(set(keep.tolist()) != set(standard.tolist()))
    assert any(differs)


@pytest.mark.slow
def test_train_and_evaluate_end_to_end(tmp_path):
    """The shared Trainer runs 3 iterations of the full method on a tiny registered dataset
    (half of its images empty) and evaluates it with CL-balanced NMS and the COCO evaluator."""
    trainer, results = train_and_evaluate_on_tiny_shapes(
        os.path.join(SHAPES, "iac_dc_clnms_R18_FPN_scratch.yaml"),
        str(tmp_path),
        prefix="d2align_test_dc_loss",
        config_hooks=[add_dc_loss_config],
    )
    assert trainer.iter == 3 and "bbox" in results and "AP75" in results["bbox"]
