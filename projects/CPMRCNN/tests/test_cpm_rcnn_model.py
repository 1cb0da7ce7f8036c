"""CPM R-CNN end to end on tiny models: the cascade's stage selection, beta_j and the ISM target
during training (decoding replaced by a known rule), zero-GT / tiny / degenerate boxes train
without NaN, seeded regression values, losses falling over a few iterations, the grid head
learning its heatmaps, and inference returning detections ranked by the fused score."""

import os

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

import d2align.projects.cpm_rcnn.grid_cascade as grid_cascade_module
from d2align.engine import build_config
from d2align.projects.cpm_rcnn import (
    CPMROIHeads,
    GridHead,
    add_cpm_rcnn_config,
    decode_grid_heatmaps,
    fused_score,
    grid_heatmap_loss,
    grid_heatmap_targets,
)
from d2align.testing import (  # noqa: F401 (one_thread: a fixture)
    NO_OBJECT,
    ROOT,
    TWO_OBJECTS,
    noise_batch,
    one_thread,
    tiny_rcnn_opts,
)

FULL = os.path.join(ROOT, "projects/CPMRCNN/configs/shapes/cpm_rcnn_R18_FPN_scratch.yaml")
# random weights, narrow heads, few proposals
TINY = tiny_rcnn_opts(post_nms_topk_test=16) + [
    "MODEL.CPM_RCNN.GRID_HEAD.NUM_CONVS", "2",
    "MODEL.CPM_RCNN.GRID_HEAD.POINT_CHANNELS", "4",
    "MODEL.ROI_IOU_HEAD.FC_DIMS", "[32, 32]",
]  # fmt: skip
ONE_STAGE = [
    "MODEL.CPM_RCNN.NUM_STAGES", "1",
    "MODEL.CPM_RCNN.MAPPING_RATIOS", "[2.0]",
    "MODEL.CPM_RCNN.IOU_THRESHOLDS", "[0.5]",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")
ONE_OBJECT = ([[20.0, 20.0, 44.0, 36.0]], [2])


def _model(opts=()):
    torch.manual_seed(0)
    model = build_model(build_config(FULL, TINY + list(opts), [add_cpm_rcnn_config]))
    assert isinstance(model.roi_heads, CPMROIHeads)
    return model


def _losses(model, batch):
    with EventStorage():
        torch.manual_seed(1)
        return model(batch)


def test_stage_selection_beta_and_ism_target_in_training(monkeypatch):
    """Decoding replaced by "move each RoI halfway to its best GT": the stages' RoIs are exactly
    the previous boxes above each threshold, the losses are beta_j omega L_BCE, and the ISM
    regresses the IoU of each final box with its GT."""
    batch = noise_batch(TWO_OBJECTS, ONE_OBJECT)
    all_gt = [b["instances"].gt_boxes.tensor for b in batch]
    model = _model()
    heads = model.roi_heads
    assert heads.stage_weights == [1.0, 0.5, 0.25] and heads.iou_thresholds == [0.5, 0.6, 0.7]
    calls = {"select": [], "decode": [], "bce": [], "ism": []}

    select = grid_cascade_module.select_stage_boxes

    def spy_select(boxes, gt, threshold):
        out = select(boxes, gt, threshold)
        calls["select"].append((boxes.clone(), gt.clone(), threshold, out))
        return out

    def halfway_decode(logits, rois, ratio):
        gt = torch.cat(all_gt)
        best = pairwise_iou(Boxes(rois), Boxes(gt)).argmax(dim=1)
        moved = 0.5 * (rois + gt[best])
        calls["decode"].append((rois.clone(), moved))
        return moved

    def spy_bce(logits, targets):
        loss = grid_heatmap_loss(logits, targets)
        calls["bce"].append(loss.detach())
        return loss

    ism_loss = heads.ism_loss

    def spy_ism(features, final):
        calls["ism"].append(final)
        return ism_loss(features, final)

    monkeypatch.setattr(grid_cascade_module, "select_stage_boxes", spy_select)
    monkeypatch.setattr(grid_cascade_module, "decode_grid_heatmaps", halfway_decode)
    monkeypatch.setattr(grid_cascade_module, "grid_heatmap_loss", spy_bce)
    monkeypatch.setattr(heads, "ism_loss", spy_ism)
    losses = _losses(model, batch)

    assert len(calls["select"]) == 3 * 2 and len(calls["decode"]) == 3  # stages x images
    for j in range(3):
        kept_rois = []
        for i in range(2):
            boxes, gt, threshold, (kept, matched, _) = calls["select"][2 * j + i]
            assert threshold == [0.5, 0.6, 0.7][j]
            iou = pairwise_iou(Boxes(boxes), Boxes(gt))
            assert kept.tolist() == (iou.max(dim=1).values >= threshold).nonzero()[:, 0].tolist()
            assert matched.tolist() == iou[kept].argmax(dim=1).tolist()
            kept_rois.append(boxes[kept])
            if j > 0:  # stage j's candidates: stage j-1's decoded boxes of that image + its GT
                previous_rois, moved = calls["decode"][j - 1]
                start = sum(len(calls["select"][2 * (j - 1) + k][3][0]) for k in range(i))
                n = len(calls["select"][2 * (j - 1) + i][3][0])
                assert len(boxes) == n + len(gt)
                assert torch.allclose(boxes[:n], moved[start : start + n])
                assert torch.equal(boxes[n:], gt)
        assert torch.equal(calls["decode"][j][0], torch.cat(kept_rois))
        assert len(kept_rois[0]) + len(kept_rois[1]) > 0
        expected = 15.0 * [1.0, 0.5, 0.25][j] * calls["bce"][j]
        assert losses[f"loss_grid_stage{j + 1}"].item() == pytest.approx(expected.item())
    # ISM: the final boxes are the last stage's decoded boxes, the target their IoU with the GT
    (final,) = calls["ism"]
    final_boxes = torch.cat([f.proposal_boxes.tensor for f in final])
    assert torch.allclose(final_boxes, calls["decode"][2][1])
    gt = torch.cat(all_gt)
    expected_iou = pairwise_iou(Boxes(final_boxes), Boxes(gt)).max(dim=1).values
    assert torch.allclose(torch.cat([f.gt_ious for f in final]), expected_iou)
    assert (expected_iou > 0.85).all()  # three halvings of the distance to the GT


def test_zero_gt_tiny_and_degenerate_boxes_train_without_nan():
    tiny = ([[30.0, 30.0, 33.0, 32.0], [10.0, 10.0, 10.0, 20.0]], [0, 3])  # 3x2 px, zero width
    for batch in (noise_batch(NO_OBJECT, NO_OBJECT), noise_batch(tiny, NO_OBJECT)):
        model = _model()
        losses = _losses(model, batch)
        assert set(losses) >= {"loss_cls", "loss_grid_stage3", "loss_ism", "loss_rsm"}
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
    # the tiny GT (appended as a proposal) trains stage 1: its 6x4 px region < the 28 map
    assert losses["loss_grid_stage1"] > 0


def test_seeded_regression_values():
    # recorded at Grid R-CNN's heatmap radius 1 (the COCO configs'; the shapes configs use 2)
    model = _model(["MODEL.CPM_RCNN.GRID_HEAD.TARGET_RADIUS", "1.0"])
    losses = _losses(model, noise_batch(TWO_OBJECTS, ONE_OBJECT))
    values = {k: round(v.item(), 4) for k, v in losses.items()}
    assert values == pytest.approx(REGRESSION_LOSSES, abs=2e-4)
    model.eval()
    with torch.no_grad():
        (out,) = model(noise_batch(TWO_OBJECTS)[:1])
    inst = out["instances"]
    assert len(inst) == REGRESSION_NUM_DETECTIONS
    assert torch.allclose(inst.pred_boxes.tensor[:2], torch.tensor(REGRESSION_BOXES), atol=1e-3)
    assert inst.scores[:3].tolist() == pytest.approx(REGRESSION_SCORES, rel=1e-3)


# seeded values of the tiny model above (random weights: no box reaches stage 3's 0.7 IoU yet,
# so stage 3 and the ISM train on the GT boxes appended to every stage; the RSM on the final
# boxes re-matched at IoU 0.5 and subsampled)
REGRESSION_LOSSES = {
    "loss_cls": 1.9311,
    "loss_grid_stage1": 0.4699,
    "loss_grid_stage2": 0.2252,
    "loss_grid_stage3": 0.0963,
    "loss_ism": 0.1813,
    "loss_rsm": 1.9337,
    "loss_rpn_cls": 0.6923,
    "loss_rpn_loc": 0.0071,
}
REGRESSION_NUM_DETECTIONS = 41
REGRESSION_BOXES = [[53.456, 20.405, 56.803, 32.006], [25.661, 39.174, 31.745, 51.082]]
REGRESSION_SCORES = [6.8538e-05, 6.3160e-05, 6.0963e-05]


def test_a_few_iterations_lower_every_loss():
    """One grid stage with ISM and RSM on a fixed batch (Adam, so that every head moves in a
    few iterations): each loss term's last iterations are below its first."""
    model = _model(ONE_STAGE)
    batch = noise_batch(TWO_OBJECTS, ONE_OBJECT)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    with EventStorage():
        for step in range(16):
            torch.manual_seed(step)
            losses = model(batch)
            history.append({k: v.item() for k, v in losses.items()})
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert set(history[0]) == {"loss_cls", "loss_grid_stage1", "loss_ism", "loss_rsm",
                               "loss_rpn_cls", "loss_rpn_loc"}  # fmt: skip
    for key in history[0]:
        first = sum(h[key] for h in history[:4]) / 4
        last = sum(h[key] for h in history[-4:]) / 4
        assert last < first, (key, first, last)


def _toy_grid_problem():
    """A seeded GridHead, fixed features of six RoIs around one GT: (head, features, gt, rois);
    the RoIs' mean IoU with the GT is 0.716."""
    torch.manual_seed(0)
    head = GridHead(ShapeSpec(channels=8, height=14, width=14), num_points=9, point_channels=4,
                    num_convs=2)  # fmt: skip
    features = torch.randn(6, 8, 14, 14)
    gt = torch.tensor([[10.0, 10.0, 50.0, 40.0]]).repeat(6, 1)
    rois = gt + torch.tensor([[-4.0, 3.0, 2.0, -3.0], [3, -2, -5, 4], [0, 0, 6, 6],
                              [-6, -6, 0, 0], [2, 2, -2, -2], [-3, 4, 3, -4]])  # fmt: skip
    return head, features, gt, rois


def _decoded_iou(logits, rois, gt) -> float:
    boxes = decode_grid_heatmaps(logits.detach(), rois, 2.0)
    return pairwise_iou(Boxes(boxes), Boxes(gt[:1])).mean().item()


def test_grid_head_learns_heatmaps_that_decode_to_the_gt():
    """A GridHead on fixed features: the BCE falls and the decoded boxes approach the GT."""
    head, features, gt, rois = _toy_grid_problem()
    targets = grid_heatmap_targets(gt, rois, 2.0, 9, 28, 1.0)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses, ious = [], []
    for _ in range(40):
        logits = head(features)
        loss = grid_heatmap_loss(logits, targets)
        ious.append(_decoded_iou(logits, rois, gt))
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]
    assert ious[-1] > 0.85 > 0.7 > ious[0]  # seeded: 0.58 -> 0.92


def _grid_head_after_sgd(radius: float, steps: int = 60):
    """(mean peak probability, mean IoU of the decoded boxes with the GT) of the toy GridHead
    trained with the schedules' optimizer (SGD, lr 0.02, momentum 0.9) and loss weight 15."""
    head, features, gt, rois = _toy_grid_problem()
    targets = grid_heatmap_targets(gt, rois, 2.0, 9, 28, radius)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.02, momentum=0.9)
    for _ in range(steps):
        loss = 15.0 * grid_heatmap_loss(head(features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = head(features)
    peak = logits.flatten(2).max(dim=2).values.sigmoid().mean().item()
    return peak, _decoded_iou(logits, rois, gt)


def test_radius_one_heatmaps_stay_at_the_prior_under_sgd_radius_two_learn():
    """Why the shapes configs use TARGET_RADIUS 2: with SGD (not Adam) and Grid R-CNN's radius
    1 (about 3 positive pixels of 784 per heatmap), 60 steps leave the heatmaps at the prior
    (0.01) and the decoded boxes far from the GT; radius 2 learns peaks and boxes (seeded:
    radius 1 peak 0.009, IoU 0.77 from RoIs at 0.72; radius 2 peak 0.43, IoU 0.91). The full
    model trained on the shapes data showed the same: heatmap peaks of 0.01-0.1 after 800
    iterations at radius 1 (README)."""
    peak_1, iou_1 = _grid_head_after_sgd(radius=1.0)
    assert peak_1 < 0.02
    peak_2, iou_2 = _grid_head_after_sgd(radius=2.0)
    assert peak_2 > 0.3 and iou_2 > 0.85 and iou_2 > iou_1 + 0.1


def test_inference_ranks_detections_by_the_fused_score():
    model = _model()
    model.eval()
    with torch.no_grad():
        outputs = model(noise_batch(TWO_OBJECTS, NO_OBJECT))
    for out in outputs:
        inst = out["instances"]
        assert 0 < len(inst) <= 96
        expected = fused_score(inst.cls_scores, inst.pred_ious, inst.rsm_scores, 0.8)
        assert torch.allclose(inst.scores, expected)
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        boxes = inst.pred_boxes.tensor
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
    # gamma = 1 and no RSM: the score is cls x ISM; without both modules, the class score
    model = _model(["MODEL.CPM_RCNN.RSM.ENABLED", "False"])
    model.eval()
    with torch.no_grad():
        inst = model(noise_batch(TWO_OBJECTS)[:1])[0]["instances"]
    assert not inst.has("rsm_scores")
    assert torch.allclose(inst.scores, inst.cls_scores * inst.pred_ious.clamp(0, 1))
    model = _model(["MODEL.CPM_RCNN.RSM.ENABLED", "False", "MODEL.CPM_RCNN.ISM.ENABLED", "False"])
    model.eval()
    with torch.no_grad():
        inst = model(noise_batch(TWO_OBJECTS)[:1])[0]["instances"]
    assert torch.equal(inst.scores, inst.cls_scores)


def test_test_score_cls_ranks_the_same_detections_by_the_class_score():
    """TEST_SCORE "cls" (the fused score's baseline): the same boxes, classes and module scores
    as "fused", the scores being the classification confidence, in its order."""
    batch = noise_batch(TWO_OBJECTS)
    insts = {}
    for test_score in ("fused", "cls"):
        model = _model(["MODEL.CPM_RCNN.TEST_SCORE", test_score])
        model.eval()
        with torch.no_grad():
            insts[test_score] = model(batch)[0]["instances"]
    fused, cls = insts["fused"], insts["cls"]
    assert torch.equal(cls.scores, cls.cls_scores)
    assert (cls.scores[:-1] >= cls.scores[1:]).all()
    assert not torch.allclose(fused.scores, fused.cls_scores)  # the modules do change the score
    # the same detections, each with the same fields, only in another order
    key_f = fused.cls_scores.argsort()
    key_c = cls.cls_scores.argsort()
    assert torch.equal(fused.pred_boxes.tensor[key_f], cls.pred_boxes.tensor[key_c])
    assert torch.equal(fused.pred_ious[key_f], cls.pred_ious[key_c])
    assert torch.equal(fused.rsm_scores[key_f], cls.rsm_scores[key_c])


def test_test_stage_returns_that_stages_boxes():
    """TEST_STAGE k runs the first k stages only: stage 1's boxes differ from stage 3's."""
    batch = noise_batch(TWO_OBJECTS)
    boxes = {}
    for stage in (1, 3):
        model = _model(["MODEL.CPM_RCNN.TEST_STAGE", str(stage)])
        model.eval()
        with torch.no_grad():
            inst = model(batch)[0]["instances"]
        boxes[stage] = inst.pred_boxes.tensor[inst.cls_scores.argsort()]
    assert boxes[1].shape == boxes[3].shape and not torch.allclose(boxes[1], boxes[3])
