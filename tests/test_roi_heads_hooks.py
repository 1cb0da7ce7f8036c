"""The ROI-head extension points of d2align.modeling on tiny CPU heads: the shared box pooler,
the box predictor registry, and the Standard / Cascade heads built on them (exactly
detectron2's with default keys; PrRoIPool gives the cascade stages a gradient w.r.t. boxes)."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    CascadeROIHeads,
    FastRCNNOutputLayers,
    StandardROIHeads,
    build_roi_heads,
)
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from d2align.engine import build_config
from d2align.modeling import (
    BOX_PREDICTOR_REGISTRY,
    D2AlignCascadeROIHeads,
    D2AlignStandardROIHeads,
    build_box_pooler,
    build_box_predictor,
)
from d2align.ops import PrRoIPooler
from d2align.testing import ROOT, random_features, random_proposals

CASCADE = f"{ROOT}/configs/shapes/cascade_rcnn_R18_FPN_scratch.yaml"
FASTER = f"{ROOT}/configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
CHANNELS = 8
INPUT_SHAPE = {f"p{level}": ShapeSpec(channels=CHANNELS, stride=2**level) for level in (2, 3, 4, 5)}
TINY = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "16",
]  # fmt: skip


@BOX_PREDICTOR_REGISTRY.register()
class _CountingPredictor(FastRCNNOutputLayers):
    """FastRCNNOutputLayers with one extra loss term, counting its inference-time calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def losses(self, predictions, proposals):
        losses = super().losses(predictions, proposals)
        losses["loss_extra"] = 0.0 * predictions[0].sum()
        return losses

    def predict_probs(self, predictions, proposals):
        self.calls += 1
        return super().predict_probs(predictions, proposals)


def _cfg(config, name, opts=()):
    return build_config(config, TINY + ["MODEL.ROI_HEADS.NAME", name] + list(opts))


def _inputs():
    """Features of a batch of two 64 x 64 images; proposals; targets (the second image has
    no object)."""
    g = torch.Generator().manual_seed(0)
    features = random_features(INPUT_SHAPE, 2, 64, g)
    gt = [torch.tensor([[6.0, 8.0, 40.0, 44.0], [30.0, 20.0, 62.0, 50.0]]), torch.zeros(0, 4)]
    proposals, targets = [], []
    for i, gt_boxes in enumerate(gt):
        proposals.append(random_proposals(24, g, max_corner=40, min_size=8, size_span=24))
        target = Instances((64, 64))
        target.gt_boxes = Boxes(gt_boxes)
        target.gt_classes = torch.tensor([0, 2][: len(gt_boxes)], dtype=torch.int64)
        targets.append(target)
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (64, 64)])
    return images, features, proposals, targets


def _train_losses(heads, seed=1):
    images, features, proposals, targets = _inputs()
    torch.manual_seed(seed)  # proposal sampling
    with EventStorage():
        return heads(images, features, proposals, targets)[1]


def _detections(heads):
    images, features, proposals, _ = _inputs()
    with torch.no_grad():
        return heads(images, features, proposals)[0]


def test_box_pooler_types_shapes_and_errors():
    pooler, channels = build_box_pooler(INPUT_SHAPE, ["p2", "p3"], 5, 0, "PrRoIPool")
    assert isinstance(pooler, PrRoIPooler) and channels == CHANNELS
    assert pooler.scales == [1 / 4, 1 / 8] and pooler.output_size == (5, 5)
    pooler, _ = build_box_pooler(INPUT_SHAPE, ["p4"], 7, 2, "ROIAlignV2")
    assert isinstance(pooler, ROIPooler)
    with pytest.raises(ValueError, match=r"MODEL\.X\.IN_FEATURES = \['p2', 'p6'\]: .*\['p6'\]"):
        build_box_pooler(INPUT_SHAPE, ["p2", "p6"], 7, 0, "PrRoIPool", "MODEL.X.IN_FEATURES")
    shapes = dict(INPUT_SHAPE, p3=ShapeSpec(channels=4, stride=8))
    with pytest.raises(ValueError, match=r"in_features = .*one channel count, got \[4, 8\]"):
        build_box_pooler(shapes, ["p2", "p3"], 7, 0, "PrRoIPool")


@pytest.mark.parametrize(
    "ours, theirs, config",
    [
        (D2AlignStandardROIHeads, StandardROIHeads, FASTER),
        (D2AlignCascadeROIHeads, CascadeROIHeads, CASCADE),
    ],
    ids=["standard", "cascade"],
)
def test_default_keys_give_exactly_detectron2s_heads(ours, theirs, config):
    torch.manual_seed(0)
    reference = build_roi_heads(_cfg(config, theirs.__name__), INPUT_SHAPE)
    torch.manual_seed(0)
    heads = build_roi_heads(_cfg(config, ours.__name__), INPUT_SHAPE)
    assert type(heads) is ours and type(reference) is theirs
    assert isinstance(heads.box_pooler, ROIPooler)
    # same construction order: the same seed gives the same initial weights
    ref_state = reference.state_dict()
    assert ref_state.keys() == heads.state_dict().keys()
    assert all(torch.equal(v, heads.state_dict()[k]) for k, v in ref_state.items())

    losses, ref_losses = _train_losses(heads.train()), _train_losses(reference.train())
    assert losses.keys() == ref_losses.keys()
    assert all(torch.equal(losses[k], ref_losses[k]) for k in losses), (losses, ref_losses)

    detections, ref_detections = _detections(heads.eval()), _detections(reference.eval())
    assert sum(len(d) for d in detections) > 0
    for det, ref in zip(detections, ref_detections):
        assert torch.equal(det.pred_boxes.tensor, ref.pred_boxes.tensor)
        assert torch.equal(det.scores, ref.scores)
        assert torch.equal(det.pred_classes, ref.pred_classes)


def test_cascade_with_prroi_pool_trains_and_box_gradient_reaches_boxes():
    cfg = _cfg(CASCADE, "D2AlignCascadeROIHeads", ["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "PrRoIPool"])
    torch.manual_seed(0)
    heads = build_roi_heads(cfg, INPUT_SHAPE).train()
    assert isinstance(heads.box_pooler, PrRoIPooler) and heads.num_cascade_stages == 3

    losses = _train_losses(heads)
    expected = {f"{k}_stage{s}" for k in ("loss_cls", "loss_box_reg") for s in range(3)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.05)
    sum(losses.values()).backward()
    for stage in range(3):
        assert heads.box_head[stage].fc1.weight.grad.abs().sum() > 0
        assert heads.box_predictor[stage].bbox_pred.weight.grad.abs().sum() > 0
    optimizer.step()
    after = _train_losses(heads)  # same batch, same sampling
    assert all(torch.isfinite(v) for v in after.values())
    assert sum(after.values()) < sum(losses.values())

    # every stage's outputs are differentiable w.r.t. the box coordinates they pool
    _, features, proposals, _ = _inputs()
    maps = [features[f] for f in heads.box_in_features]
    for stage in range(3):
        coords = [p.proposal_boxes.tensor.clone().requires_grad_() for p in proposals]
        pooled = heads.box_pooler(maps, [Boxes(c) for c in coords])
        scores, deltas = heads.box_predictor[stage](heads.box_head[stage](pooled))
        (scores.square().sum() + deltas.square().sum()).backward()
        grads = torch.cat([c.grad for c in coords])
        assert torch.isfinite(grads).all() and (grads.abs().sum(dim=1) > 0).all(), stage
    # with ROIAlign the pooled features carry no gradient w.r.t. the boxes
    torch.manual_seed(0)
    align = build_roi_heads(_cfg(CASCADE, "D2AlignCascadeROIHeads"), INPUT_SHAPE)
    coords = proposals[0].proposal_boxes.tensor.clone().requires_grad_()
    pooled = align.box_pooler(maps, [Boxes(coords), proposals[1].proposal_boxes])
    align.box_head[0](pooled).sum().backward()
    assert coords.grad is None


@pytest.mark.parametrize(
    "name, config",
    [("D2AlignStandardROIHeads", FASTER), ("D2AlignCascadeROIHeads", CASCADE)],
    ids=["standard", "cascade"],
)
def test_registered_predictor_is_picked_up_from_config(name, config):
    cfg = _cfg(config, name, ["MODEL.ROI_BOX_HEAD.PREDICTOR", "_CountingPredictor"])
    heads = build_roi_heads(cfg, INPUT_SHAPE)
    if name == "D2AlignCascadeROIHeads":
        predictors = list(heads.box_predictor)
        weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
        # each stage with its own Box2BoxTransform weights, as detectron2's cascade
        assert [p.box2box_transform.weights for p in predictors] == [tuple(w) for w in weights]
        suffixes = [f"_stage{s}" for s in range(3)]
    else:
        predictors, suffixes = [heads.box_predictor], [""]
    assert all(type(p) is _CountingPredictor for p in predictors)
    losses = _train_losses(heads.train())
    assert {"loss_extra" + s for s in suffixes} <= set(losses)
    _detections(heads.eval())
    assert [p.calls for p in predictors] == [1] * len(predictors)


def test_build_box_predictor_passes_kwargs_and_refuses_unknown_names():
    cfg = _cfg(FASTER, "D2AlignStandardROIHeads")
    assert cfg.MODEL.ROI_BOX_HEAD.PREDICTOR == "FastRCNNOutputLayers"
    predictor = build_box_predictor(cfg, ShapeSpec(channels=16), test_score_thresh=0.3)
    assert type(predictor) is FastRCNNOutputLayers and predictor.test_score_thresh == 0.3
    cfg.MODEL.ROI_BOX_HEAD.PREDICTOR = "OffsetBinPredictor"
    with pytest.raises(ValueError, match=r"MODEL\.ROI_BOX_HEAD\.PREDICTOR = 'OffsetBinPredictor'"):
        build_roi_heads(cfg, INPUT_SHAPE)
    # detectron2's own config lacks the key: the error says where it comes from
    plain = get_cfg()
    plain.merge_from_file(f"{ROOT}/configs/Base-RCNN-FPN.yaml")
    plain.MODEL.ROI_HEADS.NAME = "D2AlignStandardROIHeads"
    with pytest.raises(ValueError, match=r"PREDICTOR = None: .*add_d2align_config"):
        build_roi_heads(plain, INPUT_SHAPE)


def test_cascade_config_errors_name_the_key():
    opts = ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False"]
    with pytest.raises(ValueError, match=r"MODEL\.ROI_BOX_HEAD\.CLS_AGNOSTIC_BBOX_REG = False"):
        build_roi_heads(_cfg(CASCADE, "D2AlignCascadeROIHeads", opts), INPUT_SHAPE)
    opts = ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5, 0.6)"]
    with pytest.raises(ValueError, match=r"MODEL\.ROI_BOX_CASCADE_HEAD\.BBOX_REG_WEIGHTS"):
        build_roi_heads(_cfg(CASCADE, "D2AlignCascadeROIHeads", opts), INPUT_SHAPE)
