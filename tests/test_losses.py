"""Tests of d2align.modeling.losses: balanced L1 (Libra R-CNN) and focal loss on anchor labels."""

import math

import pytest
import torch
from fvcore.nn import sigmoid_focal_loss

from d2align.modeling.losses import balanced_l1_loss, focal_loss_on_labels


def _grad(x: float, **kwargs) -> float:
    t = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(t, torch.zeros_like(t), reduction="sum", **kwargs).backward()
    return t.grad.item()


def test_balanced_l1_defining_properties():
    """Libra R-CNN Eq. 7-9 (beta = 1): L(0) = 0, dL/dx = alpha ln(b|x| + 1) inside,
    gamma outside, with b such that alpha ln(b + 1) = gamma; L continuous at 1."""
    alpha, gamma = 0.5, 1.5
    b = math.exp(gamma / alpha) - 1
    assert balanced_l1_loss(torch.zeros(3), torch.zeros(3)).abs().max() == 0
    for x in (0.05, 0.3, 0.9):
        assert _grad(x) == pytest.approx(alpha * math.log(b * x + 1), rel=1e-9)
        assert _grad(-x) == pytest.approx(-alpha * math.log(b * x + 1), rel=1e-9)
    for x in (1.0, 1.7, 25.0):
        assert _grad(x) == pytest.approx(gamma, rel=1e-9)
    eps = 1e-7
    inside = balanced_l1_loss(torch.tensor([1 - eps], dtype=torch.float64), torch.zeros(1))
    outside = balanced_l1_loss(torch.tensor([1 + eps], dtype=torch.float64), torch.zeros(1))
    assert inside.item() == pytest.approx(outside.item(), abs=1e-6)
    # integral of the gradient from 0 to 1, numerically, equals L(1)
    xs = torch.linspace(0, 1, 20001, dtype=torch.float64)
    integral = torch.trapezoid(alpha * torch.log(b * xs + 1), xs).item()
    assert balanced_l1_loss(torch.ones(1, dtype=torch.float64), torch.zeros(1)).item() == (
        pytest.approx(integral, rel=1e-6)
    )


def test_balanced_l1_beta_and_reductions():
    pred = torch.tensor([[0.02, -0.5], [0.3, 0.0]])
    target = torch.zeros_like(pred)
    small_beta = balanced_l1_loss(pred, target, beta=0.11)
    # |x| >= beta is linear with slope gamma: L(0.5) - L(0.3) = 1.5 * 0.2
    assert (small_beta[0, 1] - small_beta[1, 0]).item() == pytest.approx(0.3, rel=1e-5)
    # inside, a smaller beta gives a steeper (larger) loss
    assert small_beta[0, 0] > balanced_l1_loss(pred, target)[0, 0]
    assert balanced_l1_loss(pred, target, reduction="sum") == pytest.approx(
        balanced_l1_loss(pred, target).sum().item()
    )
    assert balanced_l1_loss(pred[:0], target[:0], reduction="mean").item() == 0
    with pytest.raises(ValueError, match="reduction"):
        balanced_l1_loss(pred, target, reduction="max")
    with pytest.raises(ValueError, match="beta"):
        balanced_l1_loss(pred, target, beta=0.0)
    with pytest.raises(ValueError, match="differ"):
        balanced_l1_loss(pred, target[:1])


def test_focal_loss_on_labels_matches_fvcore_one_hot():
    num_classes = 3
    logits = torch.randn(2, 5, num_classes, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[0, 2, 3, -1, 1], [3, 3, -1, -1, 2]])  # 3 = background
    loss = focal_loss_on_labels(logits, labels, num_classes, alpha=0.25, gamma=2.0)
    expected = torch.zeros(())
    for i in range(2):
        for r in range(5):
            if labels[i, r] < 0:
                continue  # ignored: no loss
            target = torch.zeros(num_classes)
            if labels[i, r] < num_classes:
                target[labels[i, r]] = 1.0
            expected += sigmoid_focal_loss(
                logits[i, r], target, alpha=0.25, gamma=2.0, reduction="sum"
            )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # changing an ignored anchor's logits changes nothing
    logits2 = logits.clone()
    logits2[0, 3] += 5.0
    assert focal_loss_on_labels(logits2, labels, num_classes).item() == pytest.approx(loss.item())


def test_focal_loss_shape_error():
    with pytest.raises(ValueError, match="classes"):
        focal_loss_on_labels(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 5)
