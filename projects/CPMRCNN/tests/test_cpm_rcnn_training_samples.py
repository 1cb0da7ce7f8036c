"""What each CPM R-CNN module trains on: the grid tower reads every position of its 14 x 14
input; the RSM's samples are the final boxes re-matched to the ground truth at the foreground
threshold (hand-made layout) and subsampled like the proposals; the ground-truth boxes join
the candidates of every cascade stage."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import d2align.projects.cpm_rcnn.grid_cascade as grid_cascade_module
from d2align.projects.cpm_rcnn import GridHead
from d2align.testing import one_thread  # noqa: F401 (a fixture)

from .test_cpm_rcnn_model import ONE_OBJECT, TWO_OBJECTS, _model, noise_batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("num_convs", [2, 4])
def test_grid_tower_output_depends_on_every_input_position(num_convs):
    """d(sum of the 7 x 7 tower output) / d(input) is non-zero at each of the 196 positions of
    the pooled map (the mmdetection / official tower: plain 3x3 convs, the first of stride 2).
    A dilation-2 tower reads only the 49 even positions."""
    torch.manual_seed(0)
    head = GridHead(ShapeSpec(channels=8, height=14, width=14), num_points=9, point_channels=4,
                    num_convs=num_convs)  # fmt: skip
    x = torch.randn(3, 8, 14, 14, requires_grad=True)
    head.features(x).square().sum().backward()
    reached = x.grad.abs().sum(dim=(0, 1)) > 0  # (14, 14)
    assert reached.all(), f"{int(reached.sum())} of 196 input positions reach the tower"
    # and each output cell sees far beyond its parity class: one cell's gradient
    x.grad = None
    head.features(x)[:, :, 3, 3].sum().backward()
    seen = x.grad.abs().sum(dim=(0, 1)) > 0
    assert seen[1::2, 1::2].any() and seen[::2, ::2].any()


def _rsm_case(heads, final_boxes, negatives=3):
    """One 64 x 64 image with one GT (class 2) at (10, 10, 40, 40): `negatives` background
    proposals and the given final boxes."""
    size = (64, 64)
    target = Instances(size, gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 40.0, 40.0]])))
    target.gt_classes = torch.tensor([2])
    props = Instances(size)
    props.proposal_boxes = Boxes(torch.tensor([[45.0, 45.0, 60.0, 60.0]]).repeat(negatives, 1))
    props.gt_classes = torch.full((negatives,), heads.num_classes)
    final = Instances(size, pred_boxes=Boxes(torch.tensor(final_boxes)))
    return [props], [final], [target]


def test_rsm_samples_rematch_the_final_boxes_at_the_foreground_threshold():
    """Hand-made layout: final boxes at IoU 1.0, 0.64 and 0.42 with the GT (the last one's RoI
    was matched to that GT, but its decoded box drifted): labels 2, 2 and background."""
    heads = _model().roi_heads
    assert heads.proposal_matcher.thresholds[1] == 0.5
    final = [[10.0, 10.0, 40.0, 40.0], [10.0, 10.0, 34.0, 34.0], [22.0, 10.0, 52.0, 40.0]]
    # IoUs: 1; 576 / 900 = 0.64; (18 x 30) / (900 + 900 - 540) = 0.4286
    props, fin, targets = _rsm_case(heads, final)
    heads.batch_size_per_image = 512
    (sample,) = heads.rsm_samples(props, fin, targets)
    boxes = sample.proposal_boxes.tensor.tolist()
    labels = {tuple(b): int(c) for b, c in zip(boxes, sample.gt_classes)}
    k = heads.num_classes
    assert labels[tuple(final[0])] == 2 and labels[tuple(final[1])] == 2
    assert labels[tuple(final[2])] == k  # below 0.5: background, not class 2
    assert labels[(45.0, 45.0, 60.0, 60.0)] == k
    assert len(sample) == 3 + 3  # nothing subsampled away at 512 per image
    assert int((sample.gt_classes == k).sum()) == 4  # 3 negative proposals + the drifted box


def test_rsm_samples_are_subsampled_like_the_proposals():
    """512 per image with a quarter positives in the paper's setting; here 8 with a quarter:
    at most 2 foreground among 10 positives and 20 negatives, 8 in all."""
    heads = _model().roi_heads
    heads.batch_size_per_image, heads.positive_fraction = 8, 0.25
    final = [[10.0, 10.0, 40.0 - i * 0.1, 40.0] for i in range(10)]
    props, fin, targets = _rsm_case(heads, final, negatives=20)
    torch.manual_seed(0)
    (sample,) = heads.rsm_samples(props, fin, targets)
    assert len(sample) == 8 and int((sample.gt_classes < heads.num_classes).sum()) == 2


def _stage_candidates(monkeypatch, opts):
    """The candidate boxes each stage's selection sees, per (stage, image), in one training
    step of the tiny model on two images (2 + 1 GT boxes)."""
    seen = []
    select = grid_cascade_module.select_stage_boxes

    def spy(boxes, gt, threshold):
        seen.append((boxes.clone(), gt.clone()))
        return select(boxes, gt, threshold)

    monkeypatch.setattr(grid_cascade_module, "select_stage_boxes", spy)
    model = _model(opts)
    with EventStorage() as storage:
        torch.manual_seed(1)
        model(noise_batch(TWO_OBJECTS, ONE_OBJECT))
        rois = [storage.history(f"stage{j}/grid/num_rois").latest() for j in (1, 2, 3)]
    return seen, rois


def test_ground_truth_joins_every_stage(monkeypatch):
    """ADD_GT_TO_STAGES (default, the official code): the candidates of stages 2 and 3 end with
    the image's GT boxes, so each later stage trains on at least the 3 GT boxes from the first
    iteration; without it, the random-weight model gives stage 3 no RoI at all."""
    seen, rois = _stage_candidates(monkeypatch, [])
    for j in (1, 2):
        for i in range(2):
            boxes, gt = seen[2 * j + i]
            assert torch.equal(boxes[-len(gt) :], gt)
    assert all(r >= 3 for r in rois), rois
    off = ["MODEL.CPM_RCNN.ADD_GT_TO_STAGES", "False"]
    seen_off, rois_off = _stage_candidates(monkeypatch, off)
    assert rois_off[2] == 0 < rois[2]
    for i in range(2):  # stage 1 is the same run: stage 2 sees its boxes, plus the GT or not
        boxes, gt = seen[2 + i]
        assert torch.equal(boxes[: -len(gt)], seen_off[2 + i][0])
