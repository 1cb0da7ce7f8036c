"""The NMS type of the shared ROI heads (MODEL.D2ALIGN_ROI_HEADS): `nms_detections` with
"standard" is detectron2's single-image Fast R-CNN inference; CL-balanced NMS in the Standard
and Cascade heads gives the detections of the `d2align.ops` reference on the heads' own
candidates (and, with its centre term off, exactly detectron2's detections); bad keys and
subclasses with their own inference are refused naming the key."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import ImageList

from d2align.config import check_common_config
from d2align.engine import build_config
from d2align.modeling import D2AlignStandardROIHeads, per_class_candidates
from d2align.modeling.roi_heads_base import nms_detections
from d2align.ops import cl_balanced_nms_reference
from d2align.testing import (
    ROOT,
    lone_boxes_and_one_duplicated_object,
    random_features,
    random_proposals,
)

CASCADE = f"{ROOT}/configs/shapes/cascade_rcnn_R18_FPN_scratch.yaml"
FASTER = f"{ROOT}/configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
CHANNELS = 8
INPUT_SHAPE = {f"p{level}": ShapeSpec(channels=CHANNELS, stride=2**level) for level in (2, 3, 4, 5)}
NMS_THRESH = 0.3
TINY = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "16",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST", str(NMS_THRESH),
]  # fmt: skip


def _heads(config, name, opts=()):
    torch.manual_seed(0)
    cfg = build_config(config, TINY + ["MODEL.ROI_HEADS.NAME", name] + list(opts))
    heads = build_roi_heads(cfg, INPUT_SHAPE).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # class scores that vary over proposals
        for predictor in getattr(heads.box_predictor, "__iter__", lambda: [heads.box_predictor])():
            w = predictor.cls_score.weight
            w.copy_(torch.randn(w.shape, generator=generator) * 0.5)
    return heads


def _inputs():
    """Features of two 64 x 64 images and 40 proposals each (many overlapping)."""
    g = torch.Generator().manual_seed(0)
    features = random_features(INPUT_SHAPE, 2, 64, g)
    proposals = [
        random_proposals(40, g, max_corner=30, min_size=16, size_span=16) for _ in range(2)
    ]
    return ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (64, 64)]), features, proposals


def _detections(heads):
    images, features, proposals = _inputs()
    with torch.no_grad():
        return heads(images, features, proposals)[0]


def _same(a, b):
    return (
        torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        and torch.equal(a.scores, b.scores)
        and torch.equal(a.pred_classes, b.pred_classes)
    )


class _Predictor:
    test_score_thresh, test_nms_thresh, test_topk_per_image = 0.05, 0.5, 7


def test_standard_nms_detections_are_detectron2s():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 3, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(30, 3, 2, generator=g) * 30], dim=2).reshape(30, 12)
    boxes[3, 0] = float("inf")  # dropped as detectron2 drops it
    scores = torch.softmax(torch.randn(30, 4, generator=g) * 2, dim=1)
    ours = nms_detections(boxes, scores, (60, 70), _Predictor, "standard")
    theirs, _ = fast_rcnn_inference_single_image(boxes, scores, (60, 70), 0.05, 0.5, 7)
    assert len(ours) == 7 and _same(ours, theirs)


@pytest.mark.parametrize("config,name", [(FASTER, "D2AlignStandardROIHeads"),
                                         (CASCADE, "D2AlignCascadeROIHeads")])  # fmt: skip
def test_cl_balanced_without_centre_term_is_detectron2s_inference(config, name):
    """CL_NMS_DIS_SCALE 0 selects by score alone: the non-standard inference path gives the
    default path's (detectron2's) detections, which checks the copied stage loop."""
    standard = _detections(_heads(config, name))
    cl = _detections(
        _heads(config, name, ["MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE", "cl_balanced",
                              "MODEL.D2ALIGN_ROI_HEADS.CL_NMS_DIS_SCALE", "0.0"])
    )  # fmt: skip
    assert sum(len(d) for d in standard) > 10
    for a, b in zip(cl, standard):
        assert _same(a, b)


@pytest.mark.parametrize("config,name", [(FASTER, "D2AlignStandardROIHeads"),
                                         (CASCADE, "D2AlignCascadeROIHeads")])  # fmt: skip
def test_cl_balanced_equals_the_reference_on_the_heads_candidates(config, name):
    opts = ["MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE", "cl_balanced",
            "MODEL.D2ALIGN_ROI_HEADS.CL_NMS_DIS_SCALE", "5.0",
            "TEST.DETECTIONS_PER_IMAGE", "1000"]  # fmt: skip
    heads = _heads(config, name, opts)
    detections = _detections(heads)
    standard = _detections(_heads(config, name, ["TEST.DETECTIONS_PER_IMAGE", "1000"]))
    # the candidates, as the heads compute them (last stage's boxes, stage-averaged scores)
    images, features, proposals = _inputs()
    feats = [features[f] for f in heads.box_in_features]
    predictors = getattr(heads.box_predictor, "__iter__", lambda: [heads.box_predictor])()
    scores_per_stage, boxes = [], None
    with torch.no_grad():
        for k, predictor in enumerate(predictors):
            if k > 0:
                proposals = heads._create_proposals_from_boxes(boxes, [(64, 64)] * 2)
            if name == "D2AlignCascadeROIHeads":
                predictions = heads._run_stage(feats, proposals, k)
            else:
                pooled = heads.box_pooler(feats, [p.proposal_boxes for p in proposals])
                predictions = predictor(heads.box_head(pooled))
            boxes = predictor.predict_boxes(predictions, proposals)
            scores_per_stage.append(predictor.predict_probs(predictions, proposals))
    differs = []
    for i, det in enumerate(detections):
        scores = sum(s[i] for s in scores_per_stage) / len(scores_per_stage)
        cand_boxes, cand_scores, cand_classes, _ = per_class_candidates(
            boxes[i], scores, (64, 64), 0.05
        )
        keep, _ = cl_balanced_nms_reference(
            cand_boxes, cand_scores, cand_classes, NMS_THRESH, 1.0, 5.0
        )
        # ranked by the reported score p (ties in p + dis order)
        keep = keep[torch.sort(cand_scores[keep], descending=True, stable=True).indices]
        torch.testing.assert_close(det.pred_boxes.tensor, cand_boxes[keep])
        torch.testing.assert_close(det.scores, cand_scores[keep])
        assert torch.equal(det.pred_classes, cand_classes[keep])
        assert len(det) == len(standard[i])  # one detection per cluster of standard NMS
        differs.append(not torch.equal(det.pred_boxes.tensor, standard[i].pred_boxes.tensor))
    assert any(differs)


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE", "cl"),
        ("MODEL.D2ALIGN_ROI_HEADS.CL_NMS_TEMPERATURE", "0.0"),
        ("MODEL.D2ALIGN_ROI_HEADS.SOFT_NMS_SIGMA", "-1.0"),
    ],
)
def test_bad_keys_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        _heads(FASTER, "D2AlignStandardROIHeads", [key, value])


class _OwnInferenceHeads(D2AlignStandardROIHeads):
    def _forward_box(self, features, proposals):
        return super()._forward_box(features, proposals)


def test_subclass_with_its_own_inference_refuses_a_non_standard_type():
    cfg = build_config(FASTER, TINY + ["MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE", "soft_linear"])
    with pytest.raises(
        ValueError, match="MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE = 'soft_linear': _OwnInferenceHeads"
    ):
        _OwnInferenceHeads(cfg, INPUT_SHAPE)
    cfg = build_config(FASTER, TINY)
    assert _OwnInferenceHeads(cfg, INPUT_SHAPE).nms_type == "standard"


def test_detectron2s_own_heads_refuse_a_non_standard_type():
    """detectron2's StandardROIHeads (the shapes Faster R-CNN config) would ignore the key."""
    opts = ["MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE", "cl_balanced"]
    with pytest.raises(ValueError, match="MODEL.D2ALIGN_ROI_HEADS.NMS_TYPE = 'cl_balanced'"):
        check_common_config(build_config(FASTER, opts))
    cfg = build_config(FASTER, opts + ["MODEL.ROI_HEADS.NAME", "D2AlignStandardROIHeads"])
    check_common_config(cfg)
    check_common_config(build_config(FASTER))


class _CapPredictor:
    test_score_thresh, test_nms_thresh, test_topk_per_image = 0.05, 0.5, 100


def test_cl_balanced_cap_keeps_the_most_confident_detections():
    """100 lone boxes at p = 0.45 and one object detected twice (p = 0.50 / 0.49, IoU 0.54),
    at most 100 detections: the object's detection is kept (first, with its score p) and one
    lone box falls; ranked by p + dis the 100 lone boxes (dis = 1) pushed it out."""
    boxes, p = lone_boxes_and_one_duplicated_object()
    scores = torch.stack([p, 1 - p], dim=1)  # one class and the background
    det = nms_detections(boxes, scores, (1000, 1000), _CapPredictor, "cl_balanced")
    assert len(det) == 100
    assert det.scores[0].item() in (pytest.approx(0.50), pytest.approx(0.49))
    assert det.pred_boxes.tensor[0].tolist() in boxes[-2:].tolist()
    assert det.scores[1:].tolist() == pytest.approx([0.45] * 99)


@pytest.mark.parametrize("heads", ["StandardROIHeads", "CascadeROIHeads"])
def test_detectron2s_own_heads_refuse_a_predictor_they_would_ignore(heads):
    """An Offset Bin config with detectron2's StandardROIHeads used to train plain
    FastRCNNOutputLayers and exit 0: refused, naming both keys."""
    path = f"{ROOT}/projects/OffsetBin/configs/shapes/"
    path += "bin_expectation_hierarchical_R18_FPN_scratch.yaml"
    from d2align.projects import config_hooks_for

    cfg = build_config(path, ["MODEL.ROI_HEADS.NAME", heads], config_hooks_for(path))
    with pytest.raises(ValueError, match=rf"MODEL.ROI_BOX_HEAD.PREDICTOR = '\w+'.*{heads}"):
        check_common_config(cfg)
    check_common_config(build_config(path, [], config_hooks_for(path)))  # its own heads: fine
