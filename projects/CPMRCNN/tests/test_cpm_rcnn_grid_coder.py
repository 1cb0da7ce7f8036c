"""Grid points, extended region mapping, heatmap targets and decoding of the grid branch:
hand-worked mappings, targets decoded back to the GT box within one heatmap cell for several
mapping ratios, a hand-worked probability-weighted decoding, tiny and degenerate RoIs."""

import pytest
import torch

from d2align.projects.cpm_rcnn import (
    decode_grid_heatmaps,
    grid_heatmap_loss,
    grid_heatmap_targets,
    grid_point_layout,
    grid_points,
    heatmap_to_image,
    image_to_heatmap,
    mapped_regions,
    point_regions,
)


def test_grid_point_layout_3x3_by_hand():
    expected = [[0, 0], [0.5, 0], [1, 0], [0, 0.5], [0.5, 0.5], [1, 0.5], [0, 1], [0.5, 1], [1, 1]]
    assert torch.equal(grid_point_layout(9), torch.tensor(expected))
    points = grid_points(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), 4)
    assert torch.equal(points[0], torch.tensor([[10.0, 20.0], [30, 20], [10, 60], [30, 60]]))
    for bad in (1, 8, 0):
        with pytest.raises(ValueError, match="square"):
            grid_point_layout(bad)


def test_mapping_ratio_by_hand_and_back():
    roi = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # 20 x 40, centre (20, 40)
    assert torch.equal(mapped_regions(roi, 2.0), torch.tensor([[0.0, 0.0, 40.0, 80.0]]))
    assert torch.equal(mapped_regions(roi, 1.5), torch.tensor([[5.0, 10.0, 35.0, 70.0]]))
    assert torch.equal(mapped_regions(roi, 1.0), roi)
    with pytest.raises(ValueError, match="ratio"):
        mapped_regions(roi, 0.5)
    # each point's map covers half the region: r = 2, region (0, 0, 40, 80)
    regions = point_regions(roi, 2.0, 9)
    assert torch.equal(regions[0, 0], torch.tensor([0.0, 0.0, 20.0, 40.0]))  # top-left
    assert torch.equal(regions[0, 1], torch.tensor([10.0, 0.0, 30.0, 40.0]))  # top-middle
    assert torch.equal(regions[0, 4], roi[0])  # centre: the middle half is the RoI
    assert torch.equal(regions[0, 8], torch.tensor([20.0, 40.0, 40.0, 80.0]))  # bottom-right
    # ratio 1.5: region (5, 10, 35, 70), halves of 15 x 30 px
    assert torch.equal(point_regions(roi, 1.5, 9)[0, 5], torch.tensor([20.0, 25, 35, 55]))
    # on a 28-cell map of the top-left region (0, 0, 20, 40), cells are 20/28 x 40/28 px and
    # pixel centres integers: the region's corner (0, 0) is at (-0.5, -0.5), the RoI's corner
    # (10, 20) at (13.5, 13.5); the centre point's map (10, 20, 30, 60) has the RoI's centre
    # (20, 40) at (13.5, 13.5)
    points = torch.tensor([[[0.0, 0.0], [10.0, 20.0], [20.0, 40.0]]])
    three = regions[:, [0, 0, 4]]
    coords = image_to_heatmap(points, three, 28)
    assert torch.allclose(coords, torch.tensor([[[-0.5, -0.5], [13.5, 13.5], [13.5, 13.5]]]))
    assert torch.allclose(heatmap_to_image(coords, three, 28), points)
    # ratio 1.25: region (7.5, 15, 32.5, 65); the top-left map (7.5, 15, 20, 40) has cells of
    # 12.5/28 x 25/28 px: the RoI's corner (10, 20) is at (2.5 / (12.5/28) - 0.5, ...)
    coords = image_to_heatmap(points, point_regions(roi, 1.25, 9)[:, [0, 0, 0]], 28)
    assert coords[0, 1, 0].item() == pytest.approx(2.5 * 28 / 12.5 - 0.5)
    assert coords[0, 1, 1].item() == pytest.approx(5.0 * 28 / 25 - 0.5)


def test_target_is_a_disc_of_radius_one_around_each_point():
    # RoI (0, 0, 56, 56) at ratio 1: each point's map covers 28 x 28 px, cells of 1 px; the GT's
    # points lie at pixel centres
    roi = torch.tensor([[0.0, 0.0, 56.0, 56.0]])
    gt = torch.tensor([[20.5, 22.5, 36.5, 40.5]])
    targets = grid_heatmap_targets(gt, roi, 1.0, 9, 28, radius=1.0)
    assert targets.shape == (1, 9, 28, 28)
    assert targets.sum(dim=(2, 3)).tolist() == [[5.0] * 9]  # a pixel and its 4 neighbours
    top_left = targets[0, 0].nonzero().tolist()  # (row, col): (22, 20) in the map (0, 0, 28, 28)
    assert sorted(top_left) == [[21, 20], [22, 19], [22, 20], [22, 21], [23, 20]]
    centre = targets[0, 4].nonzero().tolist()  # (28.5, 31.5) in the map (14, 14, 42, 42)
    assert [17, 14] in centre and len(centre) == 5
    bottom_right = targets[0, 8].nonzero().tolist()  # (36.5, 40.5) in (28, 28, 56, 56)
    assert [12, 8] in bottom_right and len(bottom_right) == 5


@pytest.mark.parametrize("ratio", [1.0, 1.25, 1.5, 2.0])
def test_targets_decode_to_the_gt_box_within_one_cell(ratio):
    generator = torch.Generator().manual_seed(int(ratio * 100))
    size = 28
    gt = torch.rand(50, 2, generator=generator) * 200
    gt = torch.cat([gt, gt + 10 + torch.rand(50, 2, generator=generator) * 150], dim=1)
    wh = gt[:, 2:] - gt[:, :2]
    # RoIs whose mapped region contains the GT box, at most twice as large (so that every GT
    # point lies in its point's half of the region): scale and shift within what r allows
    low = max(1 / ratio, 0.8)
    roi_wh = wh * (low + (1 - low) * torch.rand(50, 2, generator=generator))
    slack = (ratio * roi_wh - wh) / 2
    shift = (torch.rand(50, 2, generator=generator) * 2 - 1) * slack * 0.9
    centre = 0.5 * (gt[:, :2] + gt[:, 2:]) + shift
    rois = torch.cat([centre - roi_wh / 2, centre + roi_wh / 2], dim=1)
    region = mapped_regions(rois, ratio)
    assert (region[:, :2] <= gt[:, :2] + 1e-3).all() and (region[:, 2:] >= gt[:, 2:] - 1e-3).all()

    targets = grid_heatmap_targets(gt, rois, ratio, 9, size, radius=1.0)
    assert (targets.sum(dim=(2, 3)) >= 1).all()  # every point has a positive pixel
    decoded = decode_grid_heatmaps(targets * 20 - 10, rois, ratio)
    cell = ((region[:, 2:] - region[:, :2]) / (2 * size)).repeat(1, 2)  # maps cover halves
    error = (decoded - gt).abs()
    assert (error <= cell + 1e-4).all(), (error / cell).max()
    assert (error > 0).any()  # the decoding is not given the answer


def test_decoding_weights_border_points_by_probability():
    # 2 x 2 grid, RoI (0, 0, 8, 8) at ratio 1: point k's 4 x 4 map covers a 4 x 4 px quadrant,
    # pixel (i, j) of the map at (x0, y0) is centred at (x0 + j + .5, y0 + i + .5)
    logits = torch.full((1, 4, 4, 4), -30.0)
    logits[0, 0, 0, 0] = 0.0  # top-left point at (0.5, 0.5), p = 0.5
    logits[0, 1, 1, 3] = 0.0  # top-right (map at (4, 0)) at (7.5, 1.5), p = 0.5
    logits[0, 2, 3, 2] = torch.tensor(3.0).log()  # bottom-left (0, 4): (2.5, 7.5), p = 0.75
    logits[0, 3, 2, 3] = 0.0  # bottom-right (4, 4): (7.5, 6.5), p = 0.5
    box = decode_grid_heatmaps(logits, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 1.0)
    x0 = (0.5 * 0.5 + 0.75 * 2.5) / 1.25
    y0 = (0.5 * 0.5 + 0.5 * 1.5) / 1.0
    y1 = (0.75 * 7.5 + 0.5 * 6.5) / 1.25
    assert torch.allclose(box, torch.tensor([[x0, y0, 7.5, y1]]))


def test_tiny_and_degenerate_rois_give_finite_targets_and_boxes():
    rois = torch.tensor([[10.0, 10.0, 13.0, 12.0], [5.0, 5.0, 5.0, 9.0], [7.0, 7.0, 7.0, 7.0]])
    gt = torch.tensor([[10.0, 10.0, 12.0, 12.0], [5.0, 5.0, 6.0, 9.0], [7.0, 7.0, 7.0, 7.0]])
    targets = grid_heatmap_targets(gt, rois, 2.0, 9, 28, radius=1.0)
    assert torch.isfinite(targets).all()
    assert targets[0].sum(dim=(1, 2)).min() >= 1  # a 3 x 2 px RoI still gets its discs
    logits = torch.randn(3, 9, 28, 28, requires_grad=True)
    loss = grid_heatmap_loss(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert torch.isfinite(decode_grid_heatmaps(logits.detach(), rois, 2.0)).all()


def test_heatmap_loss_by_hand_and_empty():
    logits = torch.zeros(1, 4, 2, 2)
    assert grid_heatmap_loss(logits, torch.ones_like(logits)).item() == pytest.approx(0.693147)
    logits = torch.tensor([2.0, -1.0]).view(1, 1, 1, 2)
    targets = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    expected = (
        torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(-1.0)))
    ) / 2
    assert grid_heatmap_loss(logits, targets).item() == pytest.approx(expected.item())
    empty = torch.zeros(0, 9, 28, 28, requires_grad=True)
    loss = grid_heatmap_loss(empty, torch.zeros(0, 9, 28, 28))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError):
        grid_heatmap_loss(torch.zeros(1, 9, 28, 28), torch.zeros(1, 9, 14, 14))
