import pytest
import torch

from d2align.structures import aligned_iou, refine_boxes

TARGET = torch.tensor([50.0, 50.0, 150.0, 130.0], dtype=torch.float64)


def true_iou(boxes):
    """Toy IoU predictor: the exact IoU with TARGET, differentiable in the boxes."""
    return aligned_iou(boxes, TARGET.to(boxes.dtype).expand_as(boxes))


def _algorithm2_reference(box, iou_fn, step, omega1, omega2, iters):
    """IoU-Net Algorithm 2 for one box, written out literally with per-step autograd."""
    box = box.clone()
    for it in range(1, iters + 1):
        b = box.clone().requires_grad_()
        score = iou_fn(b[None])[0]
        (grad,) = torch.autograd.grad(score, b)
        prev = score.detach()
        w, h = float(box[2] - box[0]), float(box[3] - box[1])
        new_box = box + step * grad * torch.tensor([w, h, w, h], dtype=box.dtype)
        new = iou_fn(new_box[None])[0].detach()
        if new - prev < omega2:
            return box, prev, it  # degenerated: keep the previous box
        box = new_box
        if abs(float(prev - new)) < omega1:
            return box, new, it
    return box, iou_fn(box[None])[0].detach(), iters


def _perturbed_boxes():
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(16, 4, generator=g, dtype=torch.float64) - 0.5) * 30
    return TARGET + noise


@pytest.mark.parametrize("step_size", [0.5, 5.0, 20.0])
def test_matches_per_box_algorithm2_reference(step_size):
    # 0.5: all boxes run 5 iterations; 5.0: some converge early; 20.0: steps overshoot and
    # most boxes are reverted by the omega2 rule
    boxes = _perturbed_boxes()
    out, iou, num_iters = refine_boxes(boxes, true_iou, step_size=step_size)
    if step_size > 1:
        assert (num_iters < 5).any()
    for i in range(boxes.shape[0]):
        ref_box, ref_iou, ref_iters = _algorithm2_reference(
            boxes[i], true_iou, step_size, 0.001, -0.01, 5
        )
        assert torch.allclose(out[i], ref_box), i
        assert torch.allclose(iou[i], ref_iou), i
        assert int(num_iters[i]) == ref_iters, i


def test_predicted_iou_rises_monotonically_per_iteration():
    boxes = _perturbed_boxes()
    start = true_iou(boxes)
    previous = start
    for iters in range(1, 6):
        out, iou, _ = refine_boxes(boxes, true_iou, max_iters=iters)
        # the returned IoU is the predictor's value at the returned boxes
        assert torch.allclose(iou, true_iou(out))
        assert (iou >= previous).all(), iters
        previous = iou
    assert (previous > start + 0.01).all()  # every box got measurably better


def test_gradients_scaled_by_width_and_height_hand_example():
    """q(b) = 1 - k * |b - t|^2: the x-gradient is -2k dx, scaled by the width w = 100 the step
    is -2 * 0.5 * 100 * k * dx = -dx / 2 for k = 0.005, so dx halves; y is scaled by h = 50,
    dy shrinks by 1 - 0.25 = 3/4. The improvement after step i is
    k * (2 dx_i^2 (1 - 1/4) + 2 dy_i^2 (1 - 9/16)), which first falls below omega1 = 0.001
    at step 3 for dx0 = 2, dy0 = 0.4 (0.0311, 0.0076, 0.00184, then 0.00045)."""
    k, t = 0.005, torch.tensor([[0.0, 0.0, 100.0, 50.0]], dtype=torch.float64)

    def quadratic(boxes):
        return 1 - k * ((boxes - t) ** 2).sum(dim=1)

    d0 = torch.tensor([[2.0, 0.4, 2.0, 0.4]], dtype=torch.float64)
    out1, _, _ = refine_boxes(t + d0, quadratic, max_iters=1)
    assert torch.allclose(out1 - t, d0 * torch.tensor([0.5, 0.75, 0.5, 0.75]))

    out, iou, num_iters = refine_boxes(t + d0, quadratic)
    assert int(num_iters[0]) == 4  # omega1 rule: stopped before max_iters = 5
    expected_d = d0 * torch.tensor([0.5, 0.75, 0.5, 0.75]) ** 4
    assert torch.allclose(out - t, expected_d)
    assert torch.allclose(iou, quadratic(out))


def test_omega2_rule_reverts_the_degraded_box():
    """Steep quadratic: the step overshoots (dx -> -2 dx), the score drops by far more than
    |omega2| and the box is put back; a gentle box in the same batch keeps refining."""
    t = torch.tensor([0.0, 0.0, 100.0, 100.0], dtype=torch.float64)
    k = torch.tensor([0.03, 0.001], dtype=torch.float64)[:, None]  # 2*0.5*100*k = 3 and 0.1

    def quadratic(boxes):
        return 1 - (k * (boxes - t) ** 2).sum(dim=1)

    boxes = t + torch.tensor([[1.0, 0, 1.0, 0], [10.0, 0, 10.0, 0]], dtype=torch.float64)
    out, iou, num_iters = refine_boxes(boxes, quadratic)
    assert torch.equal(out[0], boxes[0]) and int(num_iters[0]) == 1
    assert torch.allclose(iou[0], quadratic(boxes)[0])
    assert int(num_iters[1]) == 5 and iou[1] > quadratic(boxes)[1]


def test_boxes_stay_valid():
    # a predictor that rewards shrinking the box: width and height collapse to min_size
    def shrink(boxes):
        return -(boxes[:, 2] - boxes[:, 0]) - (boxes[:, 3] - boxes[:, 1])

    boxes = torch.tensor([[10.0, 20.0, 12.0, 30.0]])
    out, _, _ = refine_boxes(boxes, shrink, step_size=10.0, omega2=-1e9, max_iters=3, min_size=0.5)
    assert torch.allclose(out[0, 2:] - out[0, :2], torch.tensor([0.5, 0.5]))
    # x after step 1: 12 +- 10 * 2 -> center 11; sizes then stay at min_size around it
    assert torch.allclose(0.5 * (out[0, :2] + out[0, 2:]), torch.tensor([11.0, 25.0]))


def test_no_graph_or_grad_leaks_and_works_under_no_grad():
    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))

    def predictor(boxes):
        return true_iou(boxes * weight)

    with torch.no_grad():
        out, iou, num_iters = refine_boxes(_perturbed_boxes(), predictor)
    assert not out.requires_grad and not iou.requires_grad and out.grad_fn is None
    assert weight.grad is None
    assert num_iters.dtype == torch.int64 and (num_iters >= 1).all()
    assert (iou > true_iou(_perturbed_boxes())).all()


def test_empty_and_zero_iterations():
    def never_called(boxes):
        raise AssertionError("iou_fn must not be called for N = 0")

    out, iou, num_iters = refine_boxes(torch.zeros(0, 4), never_called)
    assert out.shape == (0, 4) and iou.shape == (0,) and num_iters.shape == (0,)
    boxes = _perturbed_boxes()
    out, iou, num_iters = refine_boxes(boxes, true_iou, max_iters=0)
    assert torch.equal(out, boxes) and torch.allclose(iou, true_iou(boxes))
    assert (num_iters == 0).all()


def test_bad_inputs():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 4.0, 9.0]])
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        refine_boxes(boxes, true_iou)
    with pytest.raises(ValueError, match="one predicted IoU per box"):
        refine_boxes(boxes[:1], lambda b: true_iou(b)[:, None])
    with pytest.raises(ValueError, match="differentiable"):
        refine_boxes(boxes[:1], lambda b: true_iou(b).detach())
    with pytest.raises(ValueError, match="omega2"):
        refine_boxes(boxes[:1], true_iou, omega2=0.01)
