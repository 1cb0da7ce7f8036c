import math

import pytest
import torch

from d2align.structures import aligned_iou, sample_jittered_boxes

GT = torch.tensor(
    [
        [10.0, 20.0, 110.0, 80.0],
        [200.0, 50.0, 230.0, 250.0],
        [5.0, 5.0, 9.0, 12.0],
        [0.0, 0.0, 640.0, 480.0],
    ]
)

# Chi-square critical value at p = 0.001 for 49 degrees of freedom (scipy.stats.chi2.ppf).
CHI2_49_P001 = 85.35
# Kolmogorov-Smirnov critical value at p = 0.001: c(alpha) / sqrt(M), c = sqrt(-ln(alpha/2)/2).
KS_C_P001 = math.sqrt(-math.log(0.001 / 2) / 2)


def _chi_square_uniform(values, low, high, bins):
    counts = torch.histc(values.double(), bins=bins, min=low, max=high)
    expected = values.numel() / bins
    return float(((counts - expected) ** 2 / expected).sum())


def _ks_uniform(values, low, high):
    x = (values.double().sort().values - low) / (high - low)
    m = x.numel()
    i = torch.arange(1, m + 1, dtype=torch.float64)
    return float(torch.max(torch.maximum(i / m - x, x - (i - 1) / m)))


def test_iou_histogram_is_uniform():
    """With M = 20000 draws from a truly uniform IoU, a 50-bin chi-square statistic (49 dof)
    exceeds 85.35 and the KS distance exceeds 1.95 / sqrt(M) with probability 0.001 each. The
    50 test bins straddle the sampler's 20 bins, so they also catch a candidate density that is
    not flat within a sampler bin. The control with num_bins=1 (the raw candidates, no
    stratification) shows both statistics do reject a non-uniform distribution."""
    g = torch.Generator().manual_seed(0)
    m = 20000
    boxes, gt_index, iou = sample_jittered_boxes(GT, m, generator=g)
    assert boxes.shape == (m, 4) and gt_index.shape == (m,) and iou.shape == (m,)
    assert gt_index.dtype == torch.int64
    assert iou.min() >= 0.5 and iou.max() <= 1.0
    # the returned IoU is the true target of the returned box
    assert torch.allclose(iou, aligned_iou(boxes, GT[gt_index]), atol=1e-6)
    # the sampler's own bins are filled exactly equally
    assert torch.equal(torch.histc(iou, bins=20, min=0.5, max=1.0), torch.full((20,), m / 20))
    assert _chi_square_uniform(iou, 0.5, 1.0, 50) < CHI2_49_P001
    assert _ks_uniform(iou, 0.5, 1.0) < KS_C_P001 / math.sqrt(m)
    # the transforms are relative to the box size: every GT gets about M / 4 boxes (std ~61)
    assert (torch.bincount(gt_index, minlength=4) - m / 4).abs().max() < 400

    _, _, raw_iou = sample_jittered_boxes(GT, m, num_bins=1, generator=g)
    assert raw_iou.min() >= 0.5
    assert _chi_square_uniform(raw_iou, 0.5, 1.0, 50) > CHI2_49_P001
    assert _ks_uniform(raw_iou, 0.5, 1.0) > KS_C_P001 / math.sqrt(m)


def test_custom_iou_range_is_uniform():
    g = torch.Generator().manual_seed(1)
    _, _, iou = sample_jittered_boxes(GT[:2], 5000, min_iou=0.6, max_iou=0.9, generator=g)
    assert iou.numel() == 5000
    assert iou.min() >= 0.6 and iou.max() <= 0.9
    assert torch.equal(torch.histc(iou, bins=20, min=0.6, max=0.9), torch.full((20,), 250.0))
    assert _ks_uniform(iou, 0.6, 0.9) < KS_C_P001 / math.sqrt(5000)


def test_transforms_shift_scale_and_reshape():
    g = torch.Generator().manual_seed(2)
    gt = GT[:1]
    boxes, _, _ = sample_jittered_boxes(gt, 2000, generator=g)
    wh = boxes[:, 2:] - boxes[:, :2]
    ctr = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    gt_wh, gt_ctr = gt[0, 2:] - gt[0, :2], 0.5 * (gt[0, :2] + gt[0, 2:])
    rel_shift = (ctr - gt_ctr) / gt_wh
    log_aspect = torch.log((wh[:, 0] / wh[:, 1]) / (gt_wh[0] / gt_wh[1]))
    # shifts within shift_range = 0.3 of the size, in both directions; scale and aspect vary
    assert rel_shift.abs().max() <= 0.3 + 1e-5
    assert (rel_shift > 0.1).any() and (rel_shift < -0.1).any()
    assert log_aspect.std() > 0.05 and torch.log(wh.prod(1) / gt_wh.prod()).std() > 0.05


def test_clipping_to_image_keeps_true_iou():
    g = torch.Generator().manual_seed(3)
    gt = torch.tensor([[0.0, 0.0, 40.0, 30.0], [60.0, 70.0, 100.0, 100.0]])  # touch the borders
    boxes, gt_index, iou = sample_jittered_boxes(gt, 1000, image_size=(100, 100), generator=g)
    assert iou.numel() == 1000
    assert boxes.min() >= 0 and boxes[:, 0::2].max() <= 100 and boxes[:, 1::2].max() <= 100
    assert torch.allclose(iou, aligned_iou(boxes, gt[gt_index]), atol=1e-6)
    assert iou.min() >= 0.5
    assert ((boxes == 0) | (boxes == 100)).any(dim=1).float().mean() > 0.2  # clipping happened


def test_deterministic_under_generator():
    out1 = sample_jittered_boxes(GT, 300, generator=torch.Generator().manual_seed(7))
    out2 = sample_jittered_boxes(GT, 300, generator=torch.Generator().manual_seed(7))
    out3 = sample_jittered_boxes(GT, 300, generator=torch.Generator().manual_seed(8))
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)
    assert not torch.equal(out1[0], out3[0])


def test_fewer_samples_than_bins():
    g = torch.Generator().manual_seed(4)
    _, _, iou = sample_jittered_boxes(GT, 7, generator=g)
    bins = ((iou - 0.5) / 0.025).floor().long().clamp(max=19)
    assert iou.numel() == 7 and bins.unique().numel() == 7  # 7 different bins got one each


def test_no_gt_returns_empty():
    boxes, gt_index, iou = sample_jittered_boxes(torch.zeros(0, 4), 64)
    assert boxes.shape == (0, 4) and gt_index.shape == (0,) and iou.shape == (0,)
    assert gt_index.dtype == torch.int64 and boxes.dtype == torch.float32


def test_bad_boxes_raise_with_index():
    gt = GT.clone()
    gt[2] = torch.tensor([5.0, 5.0, 5.0, 12.0])
    with pytest.raises(ValueError, match=r"gt_boxes\[2\]"):
        sample_jittered_boxes(gt, 10)
    gt[2] = torch.tensor([5.0, 15.0, 9.0, 12.0])
    with pytest.raises(ValueError, match=r"gt_boxes\[2\]"):
        sample_jittered_boxes(gt, 10)
    with pytest.raises(ValueError, match="min_iou"):
        sample_jittered_boxes(GT, 10, min_iou=0.0)
    with pytest.raises(ValueError, match="scale_range"):
        sample_jittered_boxes(GT, 10, scale_range=(2.0, 1.0))


def test_unfillable_bins_warn_and_return_fewer():
    # without shift or scale the aspect change alone cannot go below IoU 1/1.1 ~ 0.909
    g = torch.Generator().manual_seed(5)
    with pytest.warns(RuntimeWarning, match=r"could not fill 16 IoU bin\(s\)") as record:
        boxes, _, iou = sample_jittered_boxes(
            GT,
            200,
            scale_range=(1.0, 1.0),
            shift_range=0.0,
            aspect_range=(1 / 1.1, 1.1),
            generator=g,
        )
    assert "[0.500, 0.525): 10 missing" in str(record[0].message)
    assert boxes.shape[0] == iou.numel() == 40 and iou.min() >= 0.9
