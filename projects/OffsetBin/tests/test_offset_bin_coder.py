"""The shared offset bin coder (d2align.modeling.bin_coder): eq. 5's bins and representatives,
argmax and expectation decoding (eq. 10), K-stage hierarchical focusing (eq. 11), the cross
entropy of eq. 7 on a hand-worked example and its gradient p - y (eq. 8)."""

import math

import pytest
import torch
import torch.nn.functional as F

from d2align.modeling.bin_coder import (
    OffsetBinCoder,
    argmax_offsets,
    bin_representatives,
    bin_width,
    expected_offsets,
    offsets_to_bins,
)

A, N = 3.0, 20  # the paper's a and n
M, W = N - 2, 2 * A / (N - 2)


def _one_hot_logits(labels, num_bins, margin=1e4):
    """Logits whose softmax is exactly one-hot at `labels` (float64)."""
    return F.one_hot(labels, num_bins).double() * margin


def _inner_offsets(count=2000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * A * 0.9999


def test_representatives_of_fig4():
    # Fig. 4: [-5, 5] in five bins of width 2 (centres -4 .. 4), the outer bins at -5 and 5;
    # labels 0 .. m - 1 inside, m = (-inf, -a], m + 1 = [a, inf)
    assert bin_width(7, 5.0) == 2.0
    assert bin_representatives(7, 5.0).tolist() == [-4.0, -2.0, 0.0, 2.0, 4.0, -5.0, 5.0]
    offsets = torch.tensor([-4.9, -3.0, -1.0, 0.0, 4.99, -5.0, -7.0, 5.0, 12.0])
    assert offsets_to_bins(offsets, 7, 5.0).tolist() == [0, 1, 2, 2, 4, 5, 5, 6, 6]


def test_one_hot_at_the_true_bin_decodes_to_its_centre():
    offsets = _inner_offsets()
    labels = offsets_to_bins(offsets, N, A)
    assert labels.min() >= 0 and labels.max() <= M - 1  # inner bins only
    lower = -A + labels.double() * W
    assert bool(((lower <= offsets) & (offsets < lower + W + 1e-12)).all())  # t in its bin
    logits = _one_hot_logits(labels, N)
    centre = -A + (labels.double() + 0.5) * W
    assert torch.allclose(argmax_offsets(logits, A), centre, atol=1e-12, rtol=0)
    assert (argmax_offsets(logits, A) - offsets).abs().max() <= W / 2 + 1e-12


def test_expectation_of_a_one_hot_is_the_argmax_decode():
    labels = torch.arange(N)
    logits = _one_hot_logits(labels, N)
    assert torch.equal(expected_offsets(logits, A), argmax_offsets(logits, A))
    assert torch.equal(argmax_offsets(logits, A), bin_representatives(N, A, dtype=torch.float64))


def test_offsets_beyond_the_range_get_the_outer_labels_and_decode_to_the_ends():
    offsets = torch.tensor(
        [-A, -A - 1e-6, -50.0, -1e6, A, A + 1e-6, 50.0, 1e6], dtype=torch.float64
    )
    labels = offsets_to_bins(offsets, N, A)
    assert labels.tolist() == [M] * 4 + [M + 1] * 4
    expected = torch.tensor([-A] * 4 + [A] * 4, dtype=torch.float64)
    for decode in (argmax_offsets, expected_offsets):
        assert torch.equal(decode(_one_hot_logits(labels, N), A), expected)
    coder = OffsetBinCoder([N], [A])
    assert torch.equal(coder.encode(offsets)[:, 0], labels)


def _focused_logits(coder, offsets):
    """Logits one-hot at the true label of every stage: stage k's true label is that of what
    the one-hot stages before it leave of the offset."""
    logits = torch.zeros(*offsets.shape, coder.total_bins, dtype=torch.float64)
    start = 0
    for k, n in enumerate(coder.num_bins):
        labels = coder.encode(offsets, logits)[..., k]
        logits[..., start : start + n] = _one_hot_logits(labels, n)
        start += n
    return logits


@pytest.mark.parametrize("expectation", [False, True])
def test_two_stage_focusing_recovers_the_offset_within_a_stage2_bin(expectation):
    coder = OffsetBinCoder([N, N], [A, 0.15], expectation=expectation)
    # the paper's a_2 = 0.15 is the range of n_2 = 20 bins of width w / n_2 tiling a stage-1
    # bin, whose two edge bins are stage 2's outer bins
    w2 = bin_width(N, 0.15)
    assert w2 == pytest.approx(W / N, rel=1e-12)
    offsets = _inner_offsets()
    logits = _focused_logits(coder, offsets)
    stages = coder.stage_offsets(logits)
    centre = -A + (offsets_to_bins(offsets, N, A).double() + 0.5) * W
    assert torch.allclose(stages[:, 0], centre, atol=1e-12, rtol=0)  # stage 1: its bin
    error = (coder.decode(logits) - offsets).abs()
    residual = offsets - centre  # in [-w / 2, w / 2)
    inside = residual.abs() < 0.15
    assert 0.8 < inside.double().mean() < 0.95  # both cases occur
    assert error[inside].max() <= W / N / 2 + 1e-12  # within half a stage-2 bin
    # a residual in an edge strip [0.15, w / 2) decodes to +-a_2, at most one bin width off
    assert error[~inside].max() <= W / N + 1e-12
    assert error.max() > W / N / 2


def test_three_stage_focusing_recovers_the_offset_within_a_stage3_bin():
    coder = OffsetBinCoder([N] * 3, [A, 0.15, 0.0075])
    w2, w3 = bin_width(N, 0.15), bin_width(N, 0.0075)
    assert w3 == pytest.approx(w2 / N, rel=1e-12)
    offsets = _inner_offsets()
    logits = _focused_logits(coder, offsets)
    error = (coder.decode(logits) - offsets).abs()
    labels = coder.encode(offsets, logits)
    inner = (labels[:, 1:] < M).all(dim=1)  # stages 2 and 3 both in an inner bin
    assert 0.6 < inner.double().mean() < 0.95
    assert error[inner].max() <= w3 / 2 + 1e-12
    # an outer bin of stage 2 decodes to its end a_2 and leaves up to w2 for stage 3
    assert error.max() <= w2 / 2 + w3 + 1e-12
    two_stages = OffsetBinCoder([N] * 2, [A, 0.15])
    error2 = (two_stages.decode(_focused_logits(two_stages, offsets)) - offsets).abs()
    assert error.mean() < error2.mean() / 5


def test_later_stages_target_what_the_predicted_stages_leave():
    # stage 1 predicts the bin left of the true one: the residual exceeds a_2, so stage 2's
    # target is its upper outer bin, which moves the offset by a_2 towards the truth
    coder = OffsetBinCoder([N, N], [A, 0.15], expectation=False)
    offsets = torch.tensor([0.05, 1.0], dtype=torch.float64)
    true = offsets_to_bins(offsets, N, A)
    logits = torch.zeros(2, 2 * N, dtype=torch.float64)
    logits[:, :N] = _one_hot_logits(true - 1, N)
    labels = coder.encode(offsets, logits)
    assert labels[:, 0].tolist() == true.tolist()
    assert labels[:, 1].tolist() == [M + 1, M + 1]
    with pytest.raises(ValueError, match="depend on the predicted logits"):
        coder.encode(offsets)


def test_loss_on_a_hand_worked_example():
    # n = 4 bins over a = 1: [-1, 0), [0, 1), (-inf, -1], [1, inf); p = (0.1, 0.2, 0.3, 0.4)
    coder = OffsetBinCoder([4], [1.0])
    offsets = torch.tensor([[0.3, -2.0, 0.99, -0.2]], dtype=torch.float64)  # labels 1, 2, 1, 0
    assert coder.encode(offsets)[..., 0].tolist() == [[1, 2, 1, 0]]
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)).expand(1, 4, 4)
    expected = -(math.log(0.2) + math.log(0.3) + math.log(0.2) + math.log(0.1))  # ln(1 / 0.0012)
    assert coder.loss(logits, offsets).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(math.log(1 / 0.0012), rel=1e-12)


@pytest.mark.parametrize("stages", [([N], [A]), ([N, N], [A, 0.15])])
def test_gradient_is_p_minus_y_and_bounded_whatever_the_offset_error(stages):
    coder = OffsetBinCoder(*stages)
    generator = torch.Generator().manual_seed(0)
    # offsets from tiny to enormous errors: the gradient stays p - y (eq. 8)
    offsets = torch.tensor([0.01, -0.5, 2.9, -3.0, 7.0, -40.0, 1e3, -1e6], dtype=torch.float64)
    offsets = offsets.view(2, 4)
    logits = torch.randn(2, 4, coder.total_bins, generator=generator, dtype=torch.float64) * 3
    logits.requires_grad_(True)
    coder.loss(logits, offsets).backward()
    labels = coder.encode(offsets, logits)
    expected = torch.cat(
        [
            F.softmax(s, dim=-1) - F.one_hot(labels[..., k], n)
            for k, (s, n) in enumerate(zip(coder.split(logits.detach()), coder.num_bins))
        ],
        dim=-1,
    )
    assert torch.allclose(logits.grad, expected, atol=1e-12, rtol=0)
    assert logits.grad.abs().max() <= 1.0
    # the gradient of one offset's logits sums to 0 per stage (a softmax's)
    for stage in coder.split(logits.grad):
        assert torch.allclose(stage.sum(-1), torch.zeros(2, 4, dtype=torch.float64), atol=1e-12)


def test_no_offsets_give_a_zero_loss_with_a_gradient():
    coder = OffsetBinCoder([N, N], [A, 0.15])
    logits = torch.zeros(0, 4, 2 * N, requires_grad=True)
    loss = coder.loss(logits, torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == logits.shape


def test_expectation_decode_gradcheck():
    coder = OffsetBinCoder([6, 5], [1.0, 0.2])
    logits = torch.randn(3, 4, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(coder.decode, (logits,))


@pytest.mark.parametrize(
    "num_bins, ranges, match",
    [
        ([2], [3.0], "num_bins > 2"),
        ([20], [0.0], "offset_range > 0"),
        ([], [], "at least one stage"),
        ([20, 20], [3.0], "one value per stage"),
        ([20, 20], [3.0, W], "bin width of stage 1"),
    ],
)
def test_bad_schemes_are_refused(num_bins, ranges, match):
    with pytest.raises(ValueError, match=match):
        OffsetBinCoder(num_bins, ranges)
