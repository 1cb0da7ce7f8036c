"""Tests of the NMS family (d2align.ops.nms) against the slow references of
d2align.ops.nms_reference, hand-worked examples and torchvision's batched_nms."""

import math

import pytest
import torch
from torchvision.ops import batched_nms

from d2align.ops import (
    batched_cl_balanced_nms,
    batched_iou_guided_nms,
    batched_soft_nms,
    cl_balanced_nms_reference,
    iou_guided_nms_reference,
    soft_nms_reference,
)

# (op, reference, number of score arguments, keyword arguments of one configuration)
CASES = [
    (batched_iou_guided_nms, iou_guided_nms_reference, 2, dict(iou_threshold=0.5)),
    (batched_iou_guided_nms, iou_guided_nms_reference, 2, dict(iou_threshold=0.3)),
    (batched_soft_nms, soft_nms_reference, 1, dict(method="linear", iou_threshold=0.3)),
    (batched_soft_nms, soft_nms_reference, 1, dict(method="linear", score_threshold=0.05)),
    (batched_soft_nms, soft_nms_reference, 1, dict(method="gaussian", sigma=0.5)),
    (batched_soft_nms, soft_nms_reference, 1, dict(method="gaussian", score_threshold=0.1)),
    (batched_cl_balanced_nms, cl_balanced_nms_reference, 1, dict(iou_threshold=0.5)),
    (batched_cl_balanced_nms, cl_balanced_nms_reference, 1, dict(temperature=0.1, dis_scale=2)),
    (batched_cl_balanced_nms, cl_balanced_nms_reference, 1, dict(center_weights="probability")),
]
CASE_IDS = [f"{op.__name__}-{i}" for i, (op, _, _, _) in enumerate(CASES)]


def clustered_inputs(n, num_classes, seed, dtype=torch.float64, device="cpu"):
    """Boxes jittered around a few objects (so that many overlap), random scores and classes."""
    g = torch.Generator().manual_seed(seed)
    objects = torch.rand(max(n // 8, 1), 4, generator=g, dtype=torch.float64)
    objects[:, :2] *= 200
    objects[:, 2:] = objects[:, :2] + 10 + 60 * objects[:, 2:]
    boxes = objects[torch.randint(len(objects), (n,), generator=g)]
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    boxes = boxes + 0.15 * size * torch.randn(n, 4, generator=g, dtype=torch.float64)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = [torch.rand(n, generator=g, dtype=torch.float64) for _ in range(2)]
    idxs = torch.randint(num_classes, (n,), generator=g)
    to = dict(dtype=dtype, device=device)
    return boxes.to(**to), [s.to(**to) for s in scores], idxs.to(device)


def run(op, boxes, scores, idxs, kwargs, num_scores):
    return op(boxes, *scores[:num_scores], idxs, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_float64(case, seed):
    op, reference, num_scores, kwargs = case
    boxes, scores, idxs = clustered_inputs(120 + 40 * seed, 1 + 2 * seed, seed)
    keep, new_scores = run(op, boxes, scores, idxs, kwargs, num_scores)
    ref_keep, ref_scores = run(reference, boxes, scores, idxs, kwargs, num_scores)
    assert len(keep) < len(boxes) or op is batched_soft_nms  # something was suppressed
    assert keep.dtype == torch.int64 and new_scores.dtype == torch.float64
    assert torch.equal(keep, ref_keep)
    assert torch.equal(new_scores, ref_scores)  # bit for bit: the same operations in float64


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference_with_tied_scores(case):
    """Scores on a grid of 8 values, so that most boxes tie: broken by the lower index."""
    op, reference, num_scores, kwargs = case
    boxes, scores, idxs = clustered_inputs(200, 3, seed=9)
    scores = [(s * 8).ceil() / 8 for s in scores]
    keep, new_scores = run(op, boxes, scores, idxs, kwargs, num_scores)
    ref_keep, ref_scores = run(reference, boxes, scores, idxs, kwargs, num_scores)
    assert torch.equal(keep, ref_keep) and torch.equal(new_scores, ref_scores)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference_float32(case):
    op, reference, num_scores, kwargs = case
    boxes, scores, idxs = clustered_inputs(150, 3, seed=7, dtype=torch.float32)
    keep, new_scores = run(op, boxes, scores, idxs, kwargs, num_scores)
    ref_keep, ref_scores = run(reference, boxes, scores, idxs, kwargs, num_scores)
    assert new_scores.dtype == torch.float32
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(new_scores, ref_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_equals_per_class_nms(case):
    """Batched over classes = each class alone (here with arbitrary, negative class ids)."""
    op, _, num_scores, kwargs = case
    boxes, scores, idxs = clustered_inputs(200, 4, seed=11)
    idxs = idxs * 1000 - 7
    keep, new_scores = run(op, boxes, scores, idxs, kwargs, num_scores)
    per_class = {}
    for c in idxs.unique():
        members = torch.nonzero(idxs == c)[:, 0]
        sub = [s[members] for s in scores]
        k, s = run(op, boxes[members], sub, idxs[members], kwargs, num_scores)
        per_class.update(zip(members[k].tolist(), s.tolist()))
    assert dict(zip(keep.tolist(), new_scores.tolist())) == per_class


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_empty_and_one_box(case):
    op, _, num_scores, kwargs = case
    empty = [torch.zeros(0)] * 2
    keep, new_scores = run(op, torch.zeros(0, 4), empty, torch.zeros(0).long(), kwargs, num_scores)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and new_scores.shape == (0,)
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    one = [torch.tensor([0.7]), torch.tensor([0.4])]
    keep, new_scores = run(op, box, one, torch.tensor([3]), kwargs, num_scores)
    assert keep.tolist() == [0]
    expected = 0.7 + kwargs.get("dis_scale", 1.0) if op is batched_cl_balanced_nms else 0.7
    assert new_scores.tolist() == pytest.approx([expected])


def test_iou_guided_hand_example():
    # box 0 and 1 overlap (IoU 81/119 > 0.5), box 2 overlaps neither; class 1 holds a copy of box 0
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.0]])
    cls = torch.tensor([0.3, 0.9, 0.2, 0.1])
    loc = torch.tensor([0.8, 0.6, 0.95, 0.7])
    keep, scores = batched_iou_guided_nms(boxes, cls, loc, torch.tensor([0, 0, 0, 1]), 0.5)
    # ranked by loc: box 2, box 0 (takes box 1's classification score 0.9), then box 3 alone
    assert keep.tolist() == [2, 0, 3]
    assert scores.tolist() == pytest.approx([0.2, 0.9, 0.1])
    # at a threshold above their IoU nothing is suppressed and no score changes
    keep, scores = batched_iou_guided_nms(boxes, cls, loc, torch.tensor([0, 0, 0, 1]), 0.7)
    assert keep.tolist() == [2, 0, 3, 1] and scores.tolist() == pytest.approx([0.2, 0.3, 0.1, 0.9])


def test_iou_guided_ranked_by_classification_is_standard_nms():
    """With loc = cls, the kept boxes are torchvision's batched_nms and their scores are kept."""
    boxes, (cls, _), idxs = clustered_inputs(400, 5, seed=3, dtype=torch.float32)
    keep, scores = batched_iou_guided_nms(boxes, cls, cls, idxs, 0.5)
    assert torch.equal(keep, batched_nms(boxes, cls, idxs, 0.5))
    assert torch.equal(scores, cls[keep])


def test_soft_nms_hand_example():
    # IoU of the two boxes: intersection 1, union 3
    boxes = torch.tensor([[0, 0, 2, 1], [1, 0, 3, 1.0]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.6], dtype=torch.float64)
    idxs = torch.zeros(2, dtype=torch.long)
    keep, new = batched_soft_nms(boxes, scores, idxs, "linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 1] and new.tolist() == pytest.approx([0.9, 0.6 * (1 - 1 / 3)])
    keep, new = batched_soft_nms(boxes, scores, idxs, "linear", iou_threshold=0.4)
    assert new.tolist() == pytest.approx([0.9, 0.6])  # IoU 1/3 <= N_t: no decay
    keep, new = batched_soft_nms(boxes, scores, idxs, "gaussian", sigma=0.5)
    assert new.tolist() == pytest.approx([0.9, 0.6 * math.exp(-(1 / 9) / 0.5)])
    keep, new = batched_soft_nms(boxes, scores, idxs, "gaussian", sigma=0.5, score_threshold=0.6)
    assert keep.tolist() == [0]  # the decayed score 0.48 falls below the threshold


def test_cl_balanced_hand_example():
    # A is the seed (highest p); B and C overlap it (IoU 0.6 and 5.6/10.4) and pull the
    # weighted center to the right, so B, nearest to it, represents the cluster.
    boxes = torch.tensor([[0, 0, 4, 2], [1, 0, 5, 2], [1.2, 0, 5.2, 2]], dtype=torch.float64)
    p = [0.6, 0.55, 0.55]
    centers = [2.0, 3.0, 3.2]
    w = [math.exp(x) for x in p]
    c_hat = sum(wi * ci for wi, ci in zip(w, centers)) / sum(w)
    diag = math.hypot(5.2, 2.0)
    selection = [pi + 1 - abs(ci - c_hat) / diag for pi, ci in zip(p, centers)]
    assert selection[1] > max(selection[0], selection[2])
    scores, idxs = torch.tensor(p, dtype=torch.float64), torch.zeros(3).long()
    keep, s = batched_cl_balanced_nms(boxes, scores, idxs, center_weights="probability")
    assert keep.tolist() == [1] and s.tolist() == pytest.approx([selection[1]])
    # with dis_scale = 0 it is standard NMS: the seed A is kept with its score
    keep, s = batched_cl_balanced_nms(boxes, scores, idxs, dis_scale=0.0)
    assert keep.tolist() == [0] and s.tolist() == pytest.approx([0.6])


def _cl_selection(p, f, centers, diag):
    """Eq. 6-7 by hand: softmax(f)-weighted center, then p + 1 - |c - c_hat| / diag."""
    w = [math.exp(x) for x in f]
    c_hat = sum(wi * ci for wi, ci in zip(w, centers)) / sum(w)
    return [pi + 1 - abs(ci - c_hat) / diag for pi, ci in zip(p, centers)]


def test_cl_balanced_center_weights_logit_and_probability_by_hand():
    """Eq. 6's f read as the logit log(p / (1 - p)) (the default) or as p: the same cluster as
    in the example above at p = 0.9 / 0.85 / 0.85. Softmax over p is nearly uniform and puts
    the center near B and C (B chosen); over the logits the confident seed A weighs 9 against
    5.7 and keeps the center near itself (A chosen)."""
    boxes = torch.tensor([[0, 0, 4, 2], [1, 0, 5, 2], [1.2, 0, 5.2, 2]], dtype=torch.float64)
    p, centers, diag = [0.9, 0.85, 0.85], [2.0, 3.0, 3.2], math.hypot(5.2, 2.0)
    by_p = _cl_selection(p, p, centers, diag)
    by_logit = _cl_selection(p, [math.log(x / (1 - x)) for x in p], centers, diag)
    assert max(range(3), key=by_p.__getitem__) == 1
    assert max(range(3), key=by_logit.__getitem__) == 0
    scores, idxs = torch.tensor(p, dtype=torch.float64), torch.zeros(3).long()
    for weights, expected in (("probability", by_p), ("logit", by_logit)):
        keep, s = batched_cl_balanced_nms(boxes, scores, idxs, center_weights=weights)
        best = max(range(3), key=expected.__getitem__)
        assert keep.tolist() == [best] and s.tolist() == pytest.approx([expected[best]])
        ref_keep, _ = cl_balanced_nms_reference(boxes, scores, idxs, center_weights=weights)
        assert ref_keep.tolist() == [best]
    assert batched_cl_balanced_nms(boxes, scores, idxs)[0].tolist() == [0]  # logit by default
    with pytest.raises(ValueError, match="center_weights"):
        batched_cl_balanced_nms(boxes, scores, idxs, center_weights="softmax")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_mixed_dtypes_are_computed_in_the_widest(case):
    """Scores in bfloat16 next to float32 boxes (autocast): the op runs in float32 on the
    bfloat16 values, as if they had been widened by hand; float64 scores widen the boxes."""
    op, _, num_scores, kwargs = case
    boxes, scores, idxs = clustered_inputs(200, 3, seed=11, dtype=torch.float32)
    half = [x.bfloat16() for x in scores]
    keep, new_scores = run(op, boxes, half, idxs, kwargs, num_scores)
    ref_keep, ref_scores = run(op, boxes, [x.float() for x in half], idxs, kwargs, num_scores)
    assert torch.equal(keep, ref_keep) and torch.equal(new_scores, ref_scores)
    assert new_scores.dtype == torch.float32
    keep, new_scores = run(op, boxes, [x.double() for x in scores], idxs, kwargs, num_scores)
    ref = run(op, boxes.double(), [x.double() for x in scores], idxs, kwargs, num_scores)
    assert torch.equal(keep, ref[0]) and new_scores.dtype == torch.float64


def test_cl_balanced_without_dis_is_standard_nms():
    boxes, (p, _), idxs = clustered_inputs(400, 5, seed=5, dtype=torch.float32)
    keep, s = batched_cl_balanced_nms(boxes, p, idxs, iou_threshold=0.5, dis_scale=0.0)
    assert torch.equal(keep, batched_nms(boxes, p, idxs, 0.5)) and torch.equal(s, p[keep])


def test_identical_boxes_and_ties():
    boxes = torch.tensor([[5, 5, 25, 45.0]]).repeat(4, 1)
    idxs = torch.tensor([0, 0, 0, 1])
    equal = torch.full((4,), 0.5)
    # all tied: the lowest index of each class survives
    cls = torch.tensor([0.1, 0.4, 0.2, 0.3])
    keep, scores = batched_iou_guided_nms(boxes, cls, equal, idxs, 0.5)
    assert keep.tolist() == [0, 3] and scores.tolist() == pytest.approx([0.4, 0.3])
    keep, scores = batched_cl_balanced_nms(boxes, equal, idxs)
    assert keep.tolist() == [0, 3] and scores.tolist() == pytest.approx([1.5, 1.5])
    # linear: IoU 1 zeroes the others; Gaussian: each later pick decays once more
    keep, scores = batched_soft_nms(boxes, equal, idxs, "linear")
    assert keep.tolist() == [0, 3] and scores.tolist() == pytest.approx([0.5, 0.5])
    keep, scores = batched_soft_nms(boxes, equal, idxs, "gaussian", sigma=1.0)
    d = math.exp(-1.0)
    assert keep.tolist() == [0, 3, 1, 2]
    assert scores.tolist() == pytest.approx([0.5, 0.5, 0.5 * d, 0.5 * d * d])


def test_all_and_no_overlap():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, generator=g)
    loc = torch.rand(6, generator=g)
    idxs = torch.zeros(6, dtype=torch.long)
    nested = torch.tensor([[0, 0, 100, 100.0]]) + torch.arange(6.0)[:, None] * 0.5
    keep, s = batched_iou_guided_nms(nested, scores, loc, idxs, 0.5)
    assert keep.tolist() == [loc.argmax().item()] and s.tolist() == [scores.max().item()]
    keep, _ = batched_cl_balanced_nms(nested, scores, idxs)
    assert len(keep) == 1
    apart = torch.tensor([[0, 0, 10, 10.0]]) + torch.arange(6.0)[:, None] * 20
    keep, s = batched_iou_guided_nms(apart, scores, loc, idxs, 0.5)
    assert torch.equal(keep, loc.argsort(descending=True)) and torch.equal(s, scores[keep])
    for method in ("linear", "gaussian"):
        keep, s = batched_soft_nms(apart, scores, idxs, method)
        assert torch.equal(keep, scores.argsort(descending=True)) and torch.equal(s, scores[keep])
    keep, s = batched_cl_balanced_nms(apart, scores, idxs, dis_scale=0.25)
    assert torch.equal(keep, scores.argsort(descending=True))
    assert torch.equal(s, scores[keep] + 0.25)


def test_zero_area_boxes_never_overlap():
    boxes = torch.tensor([[3, 3, 3, 3.0], [3, 3, 3, 3.0]])
    ones = torch.ones(2)
    keep, _ = batched_iou_guided_nms(boxes, ones, ones, torch.zeros(2).long(), 0.5)
    assert keep.tolist() == [0, 1]


def test_bad_inputs():
    boxes, (s, loc), idxs = clustered_inputs(10, 2, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="boxes must be a Tensor of shape"):
        batched_soft_nms(boxes[:, :3], s, idxs)
    with pytest.raises(ValueError, match=r"scores must be a Tensor of shape \[10\]"):
        batched_soft_nms(boxes, s[:9], idxs)
    with pytest.raises(ValueError, match="idxs must be a Tensor of shape"):
        batched_iou_guided_nms(boxes, s, loc, idxs[:5], 0.5)
    with pytest.raises(ValueError, match="loc_scores must be a Tensor of shape"):
        batched_iou_guided_nms(boxes, s, loc[:, None], idxs, 0.5)
    bad = boxes.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="boxes contain non-finite"):
        batched_cl_balanced_nms(bad, s, idxs)
    bad = loc.clone()
    bad[0] = float("inf")
    with pytest.raises(ValueError, match="loc_scores contain non-finite"):
        batched_iou_guided_nms(boxes, s, bad, idxs, 0.5)
    with pytest.raises(ValueError, match="method must be 'linear' or 'gaussian'"):
        batched_soft_nms(boxes, s, idxs, method="hard")
    with pytest.raises(TypeError, match="scores must be a floating-point tensor"):
        batched_soft_nms(boxes, (s * 10).long(), idxs)
    with pytest.raises(TypeError, match="idxs must be an integer tensor"):
        batched_soft_nms(boxes, s, idxs.float())
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        batched_iou_guided_nms(boxes, s, loc, idxs, 1.5)
    with pytest.raises(ValueError, match="sigma must be positive"):
        batched_soft_nms(boxes, s, idxs, "gaussian", sigma=0.0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        batched_cl_balanced_nms(boxes, s, idxs, temperature=0.0)
    # the compiled ops check their inputs too
    with pytest.raises(TypeError, match="soft_nms: scores must have the dtype of boxes"):
        torch.ops.d2align.soft_nms(boxes, s.double(), idxs, "linear", 0.3, 0.5, 0.001)
    with pytest.raises(ValueError, match="iou_guided_nms: cls_scores must have shape"):
        torch.ops.d2align.iou_guided_nms(boxes, s[:4], loc, idxs, 0.5)
    with pytest.raises(ValueError, match="cl_balanced_nms: scores contain non-finite"):
        torch.ops.d2align.cl_balanced_nms(boxes, s / 0, s, idxs, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="cl_balanced_nms: center_logits contain non-finite"):
        torch.ops.d2align.cl_balanced_nms(boxes, s, s / 0, idxs, 0.5, 1.0, 1.0)


# Only IoU-guided NMS has a CUDA kernel. Soft-NMS and CL-balanced NMS are sequential and run on
# the CPU whatever the input's device (the wrapper copies there and back), so comparing them
# "on CUDA" with the CPU would compare the CPU kernel with itself: they get the round-trip test.
CUDA_KERNEL_CASES = [c for c in CASES if c[0] is batched_iou_guided_nms]
CPU_ONLY_CASES = [c for c in CASES if c[0] is not batched_iou_guided_nms]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CUDA_KERNEL_CASES, ids=lambda c: f"iou_guided-{c[3]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_kernel_equals_cpu_kernel(case, dtype):
    op, _, num_scores, kwargs = case
    for seed, n in [(0, 0), (1, 1), (2, 500), (3, 5000)]:
        boxes, scores, idxs = clustered_inputs(n, 20, seed, dtype=dtype)
        cpu = run(op, boxes, scores, idxs, kwargs, num_scores)
        cuda = run(op, boxes.cuda(), [s.cuda() for s in scores], idxs.cuda(), kwargs, num_scores)
        assert cuda[0].is_cuda and cuda[1].is_cuda
        assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[1], cuda[1].cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CPU_ONLY_CASES, ids=lambda c: f"{c[0].__name__}-{c[3]}")
def test_cpu_only_ops_return_on_the_input_device(case):
    """No CUDA kernel: the result of CUDA inputs comes back on their device, equal to the
    reference (a device round trip, not a kernel comparison)."""
    op, reference, num_scores, kwargs = case
    boxes, scores, idxs = clustered_inputs(300, 5, seed=4)
    keep, new_scores = run(
        op, boxes.cuda(), [s.cuda() for s in scores], idxs.cuda(), kwargs, num_scores
    )
    ref_keep, ref_scores = run(reference, boxes, scores, idxs, kwargs, num_scores)
    assert keep.is_cuda and new_scores.is_cuda
    assert torch.equal(keep.cpu(), ref_keep) and torch.equal(new_scores.cpu(), ref_scores)


def test_a_build_without_cuda_kernels_says_so(monkeypatch, caplog):
    """CUDA tensors reaching an op of a build without CUDA kernels (built on a login node
    without nvcc): PrRoIPool refuses naming the rebuild, IoU-guided NMS warns once that it runs
    on the CPU (a stand-in device: the check reads the device type only)."""
    from d2align.ops import _ext, nms

    monkeypatch.setattr(_ext, "compiled_with_cuda", lambda: False)
    with pytest.raises(RuntimeError, match="built without CUDA kernels.*FORCE_CUDA=1"):
        _ext.require_ext("prroi_pool", torch.device("cuda"))
    _ext.require_ext("prroi_pool", torch.device("cpu"))  # the CPU kernels are there
    monkeypatch.setattr(nms, "compiled_with_cuda", lambda: False)
    monkeypatch.setattr(nms, "_WARNED", set())
    with caplog.at_level("WARNING", logger="d2align"):
        nms._warn_once_cpu_fallback("batched_iou_guided_nms")
        nms._warn_once_cpu_fallback("batched_iou_guided_nms")
    assert len([r for r in caplog.records if "without CUDA kernels" in r.getMessage()]) == 1


def test_iou_guided_above_the_mask_limit_runs_per_class_with_the_same_result(monkeypatch):
    """Many candidates (above MAX_BOXES_PER_CALL): one call per class, so the CUDA kernel's
    N x N/64 mask is that of one class; the result is the batched call's, order included."""
    from d2align.ops import nms

    boxes, (s, loc), idxs = clustered_inputs(600, 4, seed=9, dtype=torch.float32)
    expected = batched_iou_guided_nms(boxes, s, loc, idxs, 0.5)
    calls = []
    original = nms._iou_guided_per_class

    def counting(*args):
        calls.append(len(args[0]))
        return original(*args)

    monkeypatch.setattr(nms, "MAX_BOXES_PER_CALL", 100)
    monkeypatch.setattr(nms, "_iou_guided_per_class", counting)
    keep, new = batched_iou_guided_nms(boxes, s, loc, idxs, 0.5)
    assert calls == [600]  # split once at the top, each class then fits
    assert torch.equal(keep, expected[0]) and torch.equal(new, expected[1])
