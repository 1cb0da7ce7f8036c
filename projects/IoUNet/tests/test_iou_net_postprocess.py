"""IoU-Net post-processing on hand-made candidates: the NMS types and refinement."""

import pytest
import torch

from d2align.projects.iou_net import IoUNetPostProcessor
from d2align.projects.iou_net.postprocess import _ChangedRowsIoU
from d2align.structures import aligned_iou, refine_boxes

GT = torch.tensor([20.0, 20.0, 60.0, 60.0])
# A: tall duplicate with the higher class score, B: well placed, C: another object, class 1
BOXES = torch.tensor([[20.0, 14.0, 60.0, 60.0], [21.0, 20.0, 60.0, 61.0], [70.0, 70.0, 90.0, 95.0]])
SCORES = torch.tensor([0.9, 0.6, 0.8])
CLASSES = torch.tensor([0, 0, 1])


def true_iou(boxes, classes):
    """A perfect IoU predictor: the IoU with GT (class 0) or with box C (class 1)."""
    targets = torch.where((classes == 0)[:, None], GT, BOXES[2])
    return aligned_iou(boxes, targets.to(boxes.dtype))


def _post(nms_type, refine=False):
    return IoUNetPostProcessor(nms_type=nms_type, nms_thresh=0.5, refine=refine)


def test_standard_nms_keeps_the_most_confident_duplicate():
    out = _post("standard")(BOXES, SCORES, CLASSES, (100, 100), true_iou)
    assert out.pred_boxes.tensor.tolist() == [BOXES[0].tolist(), BOXES[2].tolist()]
    assert out.scores.tolist() == pytest.approx([0.9, 0.8])


def test_iou_guided_nms_keeps_the_best_localized_with_the_cluster_score():
    out = _post("iou_guided")(BOXES, SCORES, CLASSES, (100, 100), true_iou)
    # IoU with GT: B 1560 / 1639 = 0.952 > A 1600 / 1840 = 0.870: B is kept, with max(0.6, 0.9)
    assert out.pred_boxes.tensor.tolist() == [BOXES[1].tolist(), BOXES[2].tolist()]
    assert out.scores.tolist() == pytest.approx([0.9, 0.8])
    assert out.pred_ious.tolist() == pytest.approx([1560 / 1639, 1.0])


def test_linear_soft_nms_decays_the_overlapping_duplicate():
    out = _post("soft_linear")(BOXES, SCORES, CLASSES, (100, 100), true_iou)
    iou_ab = float(aligned_iou(BOXES[:1], BOXES[1:2]))
    assert out.scores.tolist() == pytest.approx([0.9, 0.8, 0.6 * (1 - iou_ab)])


def test_refinement_moves_boxes_towards_higher_predicted_iou():
    out = _post("iou_guided", refine=True)(BOXES, SCORES, CLASSES, (100, 100), true_iou)
    assert out.pred_ious[0] > 1560 / 1639
    assert torch.allclose(out.pred_ious, true_iou(out.pred_boxes.tensor, out.pred_classes))


def test_changed_rows_predictor_gives_the_same_refinement_with_fewer_evaluations():
    g = torch.Generator().manual_seed(0)
    boxes = GT + (torch.rand(12, 4, generator=g) - 0.5) * 16
    classes = torch.zeros(12, dtype=torch.int64)
    rows = []

    def counting(b, c):
        rows.append(b.shape[0])
        return true_iou(b, c)

    full = refine_boxes(boxes, lambda b: true_iou(b, classes), step_size=5.0)
    cached = refine_boxes(boxes, _ChangedRowsIoU(counting, classes), step_size=5.0)
    for a, b in zip(full, cached):
        assert torch.allclose(a.double(), b.double())
    assert (full[2] < 5).any()  # some boxes stopped early ...
    assert sum(rows) < 12 * len(rows)  # ... and were not evaluated again
