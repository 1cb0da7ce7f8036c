import pytest
import torch
from detectron2.structures import Boxes

from d2align.structures import aligned_iou, pairwise_iou, proposal_iou_targets


def _iou_reference(a, b):
    """Slow scalar IoU of two XYXY boxes given as lists; 0 for an empty intersection."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    if inter <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 50
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_aligned_iou_hand_example():
    # intersection 2x2 = 4, union 16 + 16 - 4 = 28
    b1 = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b2 = torch.tensor([[2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0]])
    assert torch.allclose(aligned_iou(b1, b2), torch.tensor([4 / 28, 1.0, 0.0]))


def test_aligned_iou_matches_reference_and_d2_diagonal():
    g = torch.Generator().manual_seed(0)
    b1, b2 = _random_boxes(200, g), _random_boxes(200, g)
    iou = aligned_iou(b1, b2)
    ref = torch.tensor([_iou_reference(x, y) for x, y in zip(b1.tolist(), b2.tolist())])
    assert torch.allclose(iou, ref.double())
    assert torch.allclose(iou.float(), pairwise_iou(b1, b2).diagonal())
    assert (iou > 0).sum() > 20 and (iou == 0).sum() > 20  # both cases are exercised


def test_aligned_iou_degenerate_is_zero_with_finite_grad():
    b1 = torch.tensor(
        [[1.0, 1.0, 1.0, 5.0], [3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]],
        requires_grad=True,
    )
    b2 = torch.tensor(
        [[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 6.0, 6.0]]
    )
    iou = aligned_iou(b1, b2)
    assert torch.equal(iou, torch.zeros(4))
    iou.sum().backward()
    assert torch.isfinite(b1.grad).all()


def test_aligned_iou_gradient_matches_finite_differences():
    b1 = torch.tensor([[1.0, 2.0, 7.0, 9.0], [0.5, 0.5, 3.0, 2.0]], dtype=torch.float64)
    b2 = torch.tensor([[2.0, 1.0, 8.0, 6.0], [1.0, 0.0, 2.5, 3.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda b: aligned_iou(b, b2), (b1.clone().requires_grad_(),))


def test_aligned_iou_bad_shapes():
    with pytest.raises(ValueError, match="same number"):
        aligned_iou(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        aligned_iou(torch.zeros(2, 5), torch.zeros(2, 5))


def test_pairwise_iou_accepts_boxes_and_tensors():
    g = torch.Generator().manual_seed(1)
    b1, b2 = _random_boxes(7, g), _random_boxes(5, g)
    iou = pairwise_iou(Boxes(b1), b2)
    assert iou.shape == (7, 5) and iou.dtype == torch.float32  # detectron2's Boxes are float32
    ref = torch.tensor([[_iou_reference(x, y) for y in b2.tolist()] for x in b1.tolist()])
    assert torch.allclose(iou, ref)
    assert torch.equal(pairwise_iou(b1, Boxes(b2)), iou)
    assert pairwise_iou(torch.zeros(0, 4), b2).shape == (0, 5)


def test_proposal_iou_targets():
    gt = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 40.0]]))
    props = Boxes(
        torch.tensor(
            [[0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0], [0, 0, 1, 1]]
        ).float()
    )
    matched = torch.tensor([0, 1, 1, -1])
    # 50/100; 100/200; no overlap with GT 1; background
    expected = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert torch.allclose(proposal_iou_targets(props, gt, matched), expected)


def test_proposal_iou_targets_no_gt_and_errors():
    props = Boxes(torch.tensor([[0.0, 0.0, 10.0, 5.0], [1.0, 1.0, 2.0, 2.0]]))
    empty_gt = Boxes(torch.zeros(0, 4))
    # detectron2's Matcher gives index 0 when an image has no GT
    targets = proposal_iou_targets(props, empty_gt, torch.zeros(2, dtype=torch.long))
    assert torch.equal(targets, torch.zeros(2))
    gt = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    with pytest.raises(ValueError, match="index 1"):
        proposal_iou_targets(props, gt, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        proposal_iou_targets(props, gt, torch.tensor([0]))
    assert proposal_iou_targets(Boxes(torch.zeros(0, 4)), gt, torch.zeros(0).long()).shape == (0,)
