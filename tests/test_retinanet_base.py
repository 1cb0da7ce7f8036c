"""The RetinaNet base of d2align.modeling on a tiny CPU model: exactly detectron2's RetinaNet
with default keys (losses, gradients, detections); a subclass overriding only the assignment, or
only the classification loss, changes only that; the NMS-type switch gives the detections the
reference NMS of d2align.ops gives on the model's own candidates; bad keys are refused."""

import copy

import pytest
import torch
from detectron2.layers import batched_nms
from detectron2.modeling import RetinaNet, build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from fvcore.nn import sigmoid_focal_loss_jit, smooth_l1_loss

from d2align.engine import build_config
from d2align.modeling import D2AlignRetinaNet, per_class_nms
from d2align.modeling.losses import balanced_l1_loss
from d2align.ops import cl_balanced_nms_reference, soft_nms_reference
from d2align.testing import (  # noqa: F401 (one_thread: a fixture)
    ROOT,
    THREE_SCALE_ANCHORS,
    RecordPerClassNMS,
    lone_boxes_and_one_duplicated_object,
    noise_batch,
    one_thread,
    randomize_retinanet_head,
    tiny_retinanet_opts,
)

CONFIG = f"{ROOT}/configs/shapes/retinanet_R18_FPN_scratch.yaml"
SIZE = 64  # P3..P7 = 8x8 .. 1x1 cells
NUM_CLASSES = 6
NMS_THRESH = 0.3  # of the NMS-type tests
CL_DIS_SCALE = 5.0  # of the CL-balanced test: a cluster's boxes nearly share their centre
TINY = ["MODEL.META_ARCHITECTURE", "D2AlignRetinaNet"] + tiny_retinanet_opts(THREE_SCALE_ANCHORS)
pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(opts=()):
    return build_config(CONFIG, TINY + list(opts))


def _batch():
    """Two seeded images: three objects (two overlapping), one object."""
    return noise_batch(
        ([[4.0, 6.0, 30.0, 28.0], [20.0, 16.0, 44.0, 50.0], [40, 36, 62, 60]], [0, 3, 5]),
        ([[10.0, 12.0, 50.0, 40.0]], [2]),
        image_size=SIZE,
    )


def _randomize_head(model, cls_bias=-1.5):
    """Seeded output layers, so that scores and boxes vary over anchors and many candidates
    pass the 0.05 score threshold (cls_bias: mean logit; biases of spread 0.5)."""
    randomize_retinanet_head(model, cls_bias, cls_std=0.5, box_std=0.5)


def _model_and_reference(opts=()):
    torch.manual_seed(0)
    cfg = _cfg(opts)
    model = build_model(cfg)
    _randomize_head(model)
    reference = RetinaNet(cfg)
    reference.load_state_dict(model.state_dict())
    return model, reference


@pytest.mark.parametrize("loss_type", ["", "giou"])
def test_default_keys_give_detectron2_losses_and_gradients(loss_type):
    """Same weights, same batch: the same losses and gradients as detectron2's RetinaNet, bit
    for bit (loss_type "" is MODEL.RETINANET.BBOX_REG_LOSS_TYPE, smooth L1)."""
    opts = ["MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "giou"] if loss_type else []
    model, reference = _model_and_reference(opts)
    assert type(model) is D2AlignRetinaNet
    model.train(), reference.train()
    batch = _batch()
    # fvcore's focal loss is TorchScript: its first calls (profiling runs) and the optimised
    # later ones differ in the last bit of the backward, so both models run after a warm-up
    warm_up = copy.deepcopy(reference)  # (its loss normaliser moves; the reference's does not)
    for _ in range(2):
        with EventStorage():
            sum(warm_up(batch).values()).backward()
    results = []
    for net in (model, reference):
        with EventStorage() as storage:
            losses = net(batch)
            sum(losses.values()).backward()
        grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
        results.append((losses, grads, storage.latest()["num_pos_anchors"][0]))
    (ours, our_grads, our_pos), (theirs, their_grads, their_pos) = results
    assert set(ours) == set(theirs) == {"loss_cls", "loss_box_reg"}
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["loss_box_reg"] > 0 and our_pos == their_pos > 0
    assert our_grads.keys() == their_grads.keys() and len(our_grads) > 0
    for name in our_grads:
        assert torch.equal(our_grads[name], their_grads[name]), name


def test_default_keys_give_detectron2_detections():
    model, reference = _model_and_reference()
    model.eval(), reference.eval()
    images = [{"image": x["image"]} for x in _batch()]
    with torch.no_grad():
        ours, theirs = model(images), reference(images)
    for a, b in zip(ours, theirs):
        a, b = a["instances"], b["instances"]
        assert len(a) > 10
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)


class _BestAnchorOnly(D2AlignRetinaNet):
    """Overrides only the assignment: each ground truth's best-IoU anchor is positive (for both
    tasks), every other anchor negative."""

    @torch.no_grad()
    def assign_anchors(self, anchors, gt_instances, pred_logits, pred_anchor_deltas):
        anchors = Boxes.cat(anchors)
        gt_labels, gt_boxes, reg_masks = [], [], []
        for gt in gt_instances:
            best = pairwise_iou(gt.gt_boxes, anchors).argmax(dim=1)  # (G,)
            labels = torch.full((len(anchors),), self.num_classes, dtype=torch.int64)
            labels[best] = gt.gt_classes
            boxes = torch.zeros_like(anchors.tensor)
            boxes[best] = gt.gt_boxes.tensor
            gt_labels.append(labels)
            gt_boxes.append(boxes)
            reg_masks.append(labels != self.num_classes)
        return gt_labels, gt_boxes, reg_masks


def _dense_predictions(model, batch):
    """(logits (N, R, K), deltas (N, R, 4), anchors (R, 4)) of the model on the batch."""
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, deltas = model._transpose_dense_predictions(
        model.head(features), [model.num_classes, 4]
    )
    anchors = Boxes.cat(model.anchor_generator(features)).tensor
    return torch.cat(logits, dim=1), torch.cat(deltas, dim=1), anchors


def test_assignment_override_is_what_trains():
    """The losses of a subclass that overrides only `assign_anchors` are the focal and smooth L1
    losses of its own positives, computed here by hand; a few SGD steps raise the score of its
    positives for their class."""
    torch.manual_seed(0)
    cfg = _cfg()
    model = _BestAnchorOnly(cfg)
    _randomize_head(model)
    model.train()
    batch = _batch()
    with torch.no_grad():
        logits, deltas, anchors = _dense_predictions(model, batch)
    labels, boxes, _ = model.assign_anchors(
        [Boxes(anchors)], [x["instances"] for x in batch], None, None
    )
    labels, boxes = torch.stack(labels), torch.stack(boxes)
    positive = labels != NUM_CLASSES
    assert positive.sum() == 4  # one anchor per ground truth, no two share one
    targets = torch.nn.functional.one_hot(labels, NUM_CLASSES + 1)[..., :-1].float()
    normalizer = 0.9 * 100 + 0.1 * 4
    expected_cls = sigmoid_focal_loss_jit(logits, targets, alpha=0.25, gamma=2.0, reduction="sum")
    target_deltas = model.box2box_transform.get_deltas(
        anchors.expand(2, -1, -1)[positive], boxes[positive]
    )
    expected_reg = smooth_l1_loss(deltas[positive], target_deltas, beta=0.0, reduction="sum")

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with EventStorage() as storage:
        losses = model(batch)
        assert storage.latest()["num_pos_anchors"][0] == 2.0  # 4 positives over 2 images
        torch.testing.assert_close(losses["loss_cls"], expected_cls / normalizer)
        torch.testing.assert_close(losses["loss_box_reg"], expected_reg / normalizer)
        for _ in range(10):
            total = sum(model(batch).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    with torch.no_grad():
        after, _, _ = _dense_predictions(model, batch)

    def margins(logits):  # (4,): each positive's logit of its class over the negatives' mean
        return logits[positive, labels[positive]] - logits[~positive].mean()

    assert (margins(after) > margins(logits) + 0.3).all(), (margins(logits), margins(after))

    # the default assignment (detectron2's Matcher) has other positives, so another loss
    default = D2AlignRetinaNet(cfg)
    default.load_state_dict(model.state_dict())
    with EventStorage() as storage:
        default(batch)
    assert storage.latest()["num_pos_anchors"][0] != 2.0


class _ReweightedPositives(D2AlignRetinaNet):
    """Overrides only the classification loss: seeded random weights on the positive anchors,
    rescaled so that the positives' weighted loss keeps its unweighted sum (DC Loss eq. 2)."""

    def classification_loss(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        loss = self.focal_loss_per_anchor(pred_logits, gt_labels)  # (N, R)
        positive = (gt_labels >= 0) & (gt_labels != self.num_classes)
        generator = torch.Generator().manual_seed(1)
        weights = torch.ones_like(loss)
        weights[positive] = torch.rand(int(positive.sum()), generator=generator) + 0.5
        pos_loss = loss.detach()[positive]
        weights[positive] *= pos_loss.sum() / (weights[positive] * pos_loss).sum()
        return (weights * loss).sum()


def test_classification_loss_override_keeps_regression():
    """A subclass overriding only `classification_loss` keeps the regression loss exactly; with
    weights that preserve the positives' sum its classification loss equals the default one (up
    to rounding) while the gradient on the logits changes."""
    torch.manual_seed(0)
    cfg = _cfg()
    base = build_model(cfg)
    _randomize_head(base)
    reweighted = _ReweightedPositives(cfg)
    reweighted.load_state_dict(base.state_dict())
    batch = _batch()
    out = []
    for net in (base, reweighted):
        net.train()
        with EventStorage():
            losses = net(batch)
            losses["loss_cls"].backward()
        out.append((losses, net.head.cls_score.weight.grad.clone()))
    (base_losses, base_grad), (new_losses, new_grad) = out
    assert torch.equal(new_losses["loss_box_reg"], base_losses["loss_box_reg"])
    torch.testing.assert_close(new_losses["loss_cls"], base_losses["loss_cls"])
    assert not torch.allclose(new_grad, base_grad)


def test_focal_loss_per_anchor_sums_to_classification_loss():
    torch.manual_seed(0)
    model = build_model(_cfg())
    _randomize_head(model)
    batch = _batch()
    logits, deltas, anchors = _dense_predictions(model, batch)
    labels, boxes = model.label_anchors([Boxes(anchors)], [x["instances"] for x in batch])
    labels = torch.stack(labels)
    assert (labels == -1).any()  # some ignored anchors
    per_anchor = model.focal_loss_per_anchor([logits], labels)
    assert per_anchor.shape == labels.shape
    assert (per_anchor[labels == -1] == 0).all() and (per_anchor[labels >= 0] > 0).all()
    total = model.classification_loss([Boxes(anchors)], [logits], labels, [deltas], boxes)
    torch.testing.assert_close(per_anchor.sum(), total)


def test_balanced_l1_regression_loss():
    """BBOX_REG_LOSS_TYPE "balanced_l1": the base's box loss is balanced L1 on the foreground
    anchors' deltas, by hand here, with the configured alpha, gamma, beta."""
    torch.manual_seed(0)
    opts = [
        "MODEL.D2ALIGN_RETINANET.BBOX_REG_LOSS_TYPE", "balanced_l1",
        "MODEL.D2ALIGN_RETINANET.BALANCED_L1.BETA", "0.2",
    ]  # fmt: skip
    model = build_model(_cfg(opts))
    _randomize_head(model)
    model.train()
    batch = _batch()
    with torch.no_grad():
        _, deltas, anchors = _dense_predictions(model, batch)
    labels, boxes = model.label_anchors([Boxes(anchors)], [x["instances"] for x in batch])
    fg = (torch.stack(labels) >= 0) & (torch.stack(labels) != NUM_CLASSES)
    target = model.box2box_transform.get_deltas(
        anchors.expand(2, -1, -1)[fg], torch.stack(boxes)[fg]
    )
    expected = balanced_l1_loss(
        deltas[fg], target, alpha=0.5, gamma=1.5, beta=0.2, reduction="sum"
    ) / (0.9 * 100 + 0.1 * int(fg.sum()))
    with EventStorage():
        losses = model(batch)
    torch.testing.assert_close(losses["loss_box_reg"], expected)


class _RecordingNMS(RecordPerClassNMS, D2AlignRetinaNet):
    """Records the candidates and a copy of the detections of every `per_class_nms` call."""


def _detections_of(nms_type, opts_extra=()):
    torch.manual_seed(0)
    # every detection kept (no cut at 100), so that all of the NMS's decisions are compared;
    # IoU threshold 0.3 (Soft-NMS's N_t of Bodla et al.): clusters of up to 4 boxes here
    opts = [
        "MODEL.D2ALIGN_RETINANET.NMS_TYPE", nms_type,
        "MODEL.RETINANET.NMS_THRESH_TEST", str(NMS_THRESH),
        "TEST.DETECTIONS_PER_IMAGE", "2000",
    ]  # fmt: skip
    cfg = _cfg(opts + list(opts_extra))
    model = _RecordingNMS(cfg)
    _randomize_head(model, cls_bias=-3.0)  # about a third of the anchor-class pairs pass
    model.eval()
    model.records = []
    with torch.no_grad():
        model([{"image": x["image"]} for x in _batch()])
    return model.records


def _reference(nms_type, boxes, scores, classes, thresh):
    if nms_type.startswith("soft_"):
        method = nms_type[len("soft_") :]
        return soft_nms_reference(boxes, scores, classes, method, thresh, 0.5, 0.001)
    keep, _ = cl_balanced_nms_reference(boxes, scores, classes, thresh, 1.0, CL_DIS_SCALE)
    return keep, scores[keep]


def _by_box_and_class(boxes, classes, scores):
    return {
        (tuple(box), c): p for box, c, p in zip(boxes.tolist(), classes.tolist(), scores.tolist())
    }


@pytest.mark.parametrize("nms_type", ["soft_linear", "soft_gaussian", "cl_balanced"])
def test_nms_type_switch_matches_reference(nms_type):
    """On the model's own candidates, the detections are what the slow reference NMS of
    d2align.ops keeps, and they differ from standard NMS's: Soft-NMS keeps more (decayed)
    boxes, CL-balanced NMS as many clusters but other boxes for some."""
    standard = _detections_of("standard")
    opts = ["MODEL.D2ALIGN_RETINANET.CL_NMS_DIS_SCALE", str(CL_DIS_SCALE)]
    opts = opts if nms_type == "cl_balanced" else []
    other_boxes = []
    for (cands, dets), (std_cands, std_dets) in zip(_detections_of(nms_type, opts), standard):
        assert torch.equal(cands.pred_boxes.tensor, std_cands.pred_boxes.tensor)
        boxes, scores, classes = cands.pred_boxes.tensor, cands.scores, cands.pred_classes
        assert len(boxes) > 50
        keep, ref_scores = _reference(nms_type, boxes, scores, classes, NMS_THRESH)
        # the kernel decays float32 scores, the reference float64 ones: the same detections with
        # the same scores up to rounding, in an order that may differ where scores nearly tie.
        # A detection is keyed by (box, class): one candidate per (anchor, class).
        ours = _by_box_and_class(dets.pred_boxes.tensor, dets.pred_classes, dets.scores)
        theirs = _by_box_and_class(boxes[keep], classes[keep], ref_scores)
        assert len(ours) == len(dets) and ours.keys() == theirs.keys()
        for key, score in ours.items():
            assert score == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key
        assert (dets.scores[1:] <= dets.scores[:-1]).all()  # best first, by the reported score
        std_keep = batched_nms(boxes, scores, classes, NMS_THRESH)
        assert torch.equal(std_dets.pred_boxes.tensor, boxes[std_keep])
        assert not (
            torch.equal(dets.pred_boxes.tensor, std_dets.pred_boxes.tensor)
            and torch.equal(dets.scores, std_dets.scores)
        )
        if nms_type.startswith("soft_"):
            assert len(keep) > len(std_keep)
        else:
            assert len(keep) == len(std_keep)
            other_boxes.append(set(keep.tolist()) != set(std_keep.tolist()))
    assert nms_type.startswith("soft_") or any(other_boxes)


def test_cl_balanced_parameters_reach_the_nms():
    """CL_NMS_DIS_SCALE 0 is standard NMS (selection by score alone)."""
    for (_, dets), (_, std) in zip(
        _detections_of("cl_balanced", ["MODEL.D2ALIGN_RETINANET.CL_NMS_DIS_SCALE", "0.0"]),
        _detections_of("standard"),
    ):
        assert torch.equal(dets.pred_boxes.tensor, std.pred_boxes.tensor)
        assert torch.equal(dets.scores, std.scores)


def test_per_class_nms_refuses_unknown_type():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="nms_type"):
        per_class_nms(boxes, torch.ones(1), torch.zeros(1, dtype=torch.int64), "hard")


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.D2ALIGN_RETINANET.NMS_TYPE", "hard"),
        ("MODEL.D2ALIGN_RETINANET.BBOX_REG_LOSS_TYPE", "l2"),
        ("MODEL.D2ALIGN_RETINANET.BALANCED_L1.GAMMA", "0.0"),
        ("MODEL.D2ALIGN_RETINANET.CLS_LOSS_WEIGHT", "-1.0"),
        ("MODEL.D2ALIGN_RETINANET.SOFT_NMS_SIGMA", "0.0"),
        ("MODEL.D2ALIGN_RETINANET.SOFT_NMS_SCORE_THRESH", "1.5"),
        ("MODEL.D2ALIGN_RETINANET.CL_NMS_TEMPERATURE", "0.0"),
        ("MODEL.D2ALIGN_RETINANET.CL_NMS_DIS_SCALE", "-0.5"),
        ("MODEL.RETINANET.NMS_THRESH_TEST", "1.5"),
        ("MODEL.RETINANET.NMS_THRESH_TEST", "-0.1"),
        ("MODEL.RETINANET.SCORE_THRESH_TEST", "-0.05"),
        ("MODEL.RETINANET.TOPK_CANDIDATES_TEST", "0"),
        ("TEST.DETECTIONS_PER_IMAGE", "0"),
    ],
)
def test_bad_keys_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " = "):
        build_model(_cfg([key, value]))


def test_cl_balanced_cap_keeps_the_most_confident_detections():
    """RetinaNet's path of the layout of `lone_boxes_and_one_duplicated_object`: with
    TEST.DETECTIONS_PER_IMAGE 100 the object's detection (p = 0.50 or 0.49) is kept first."""
    cfg = _cfg(
        [
            "MODEL.D2ALIGN_RETINANET.NMS_TYPE",
            "cl_balanced",
            "MODEL.RETINANET.NMS_THRESH_TEST",
            "0.5",
            "TEST.DETECTIONS_PER_IMAGE",
            "100",
        ]
    )
    model = D2AlignRetinaNet(cfg).eval()  # fmt: skip
    boxes, p = lone_boxes_and_one_duplicated_object()
    candidates = Instances((1000, 1000), pred_boxes=Boxes(boxes), scores=p)
    candidates.pred_classes = torch.zeros(len(p), dtype=torch.int64)
    det = model.per_class_nms(candidates)
    assert len(det) == 100
    assert det.pred_boxes.tensor[0].tolist() in boxes[-2:].tolist()
    assert det.scores[0].item() in (pytest.approx(0.50), pytest.approx(0.49))
    assert det.scores[1:].tolist() == pytest.approx([0.45] * 99)
