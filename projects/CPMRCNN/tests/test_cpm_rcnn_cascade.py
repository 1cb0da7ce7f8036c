"""Cascade Mapping stage selection and loss weights, and the fused score (eq. 4), on hand
values."""

import pytest
import torch

from d2align.projects.cpm_rcnn import fused_score, select_stage_boxes, stage_loss_weights


def test_beta_halves_per_stage():
    assert stage_loss_weights(1) == [1.0]
    assert stage_loss_weights(3) == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError):
        stage_loss_weights(0)


def test_stage_selection_keeps_exactly_the_boxes_above_the_threshold():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0]])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 5.5],  # IoU 0.55 with GT 0
            [100.0, 100.0, 120.0, 113.0],  # 0.65 with GT 1
            [0.0, 0.0, 10.0, 7.5],  # 0.75 with GT 0
            [50.0, 50.0, 60.0, 60.0],  # 0
            [0.0, 0.0, 10.0, 4.5],  # 0.45
            [100.0, 100.0, 120.0, 120.0],  # 1.0 with GT 1
        ]
    )
    expected = {0.5: [0, 1, 2, 5], 0.6: [1, 2, 5], 0.7: [2, 5]}
    matches = {0: 0, 1: 1, 2: 0, 5: 1}
    ious = {0: 0.55, 1: 0.65, 2: 0.75, 5: 1.0}
    for threshold, kept_expected in expected.items():
        kept, matched, iou = select_stage_boxes(boxes, gt, threshold)
        assert kept.tolist() == kept_expected
        assert matched.tolist() == [matches[i] for i in kept_expected]
        assert iou.tolist() == pytest.approx([ious[i] for i in kept_expected])


def test_stage_selection_without_gt_or_boxes():
    kept, matched, iou = select_stage_boxes(torch.rand(4, 4), torch.zeros(0, 4), 0.5)
    assert kept.numel() == matched.numel() == iou.numel() == 0
    kept, _, _ = select_stage_boxes(torch.zeros(0, 4), torch.tensor([[0.0, 0, 5, 5]]), 0.5)
    assert kept.numel() == 0


def test_fused_score_eq4_by_hand():
    cls, ism, rsm = torch.tensor([0.9, 0.5]), torch.tensor([0.64, 1.2]), torch.tensor([0.5, 0.8])
    score = fused_score(cls, ism, rsm, 0.8)
    expected = [(0.9 * 0.64) ** 0.8 * 0.5**0.2, (0.5 * 1.0) ** 0.8 * 0.8**0.2]  # ISM clamped
    assert score.tolist() == pytest.approx(expected)
    # gamma = 1: cls x ISM; gamma = 0: RSM alone
    assert fused_score(cls, ism, rsm, 1.0).tolist() == pytest.approx([0.9 * 0.64, 0.5])
    assert fused_score(cls, ism, rsm, 0.0).tolist() == pytest.approx([0.5, 0.8])
    # without a module: cls x ISM (no RSM), cls^g RSM^(1-g) (no ISM), cls (neither)
    assert fused_score(cls, ism, None, 0.8).tolist() == pytest.approx([0.9 * 0.64, 0.5])
    no_ism = [0.9**0.8 * 0.5**0.2, 0.5**0.8 * 0.8**0.2]
    assert fused_score(cls, None, rsm, 0.8).tolist() == pytest.approx(no_ism)
    assert torch.equal(fused_score(cls, None, None, 0.8), cls)
    # a negative predicted IoU never gives NaN
    assert fused_score(cls, torch.tensor([-0.1, 0.5]), rsm, 0.8).tolist()[0] == 0.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            fused_score(cls, ism, rsm, bad)
