"""PrRoIPooler: FPN level assignment as detectron2's ROIPooler, gradients to Boxes.tensor, and
build_roi_pooler's choice of pooler."""

import math
import unittest

import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from d2align.ops import PrRoIPooler, build_roi_pooler, prroi_pool

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def fpn_level(box, canonical_box_size=224, canonical_level=4, min_level=2, max_level=5):
    """FPN paper eq. (1): floor(k0 + log2(sqrt(area) / 224)), clamped to the pyramid."""
    size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    level = math.floor(canonical_level + math.log2(size / canonical_box_size + 1e-8))
    return min(max(level, min_level), max_level)


def make_features(generator, channels=3, image=(128, 160)):
    h, w = image
    return [
        torch.randn(2, channels, h // 4 // 2**i, w // 4 // 2**i, generator=generator)
        for i in range(len(SCALES))
    ]


class TestPrRoIPooler(unittest.TestCase):
    def setUp(self):
        generator = torch.Generator().manual_seed(0)
        self.features = make_features(generator)
        # sqrt(area): 20, 112 (first box on P3), 111.9 (P2), 224 (P4), 300, 448 (P5), 900.
        self.boxes = [
            Boxes(
                torch.tensor(
                    [
                        [3.0, 5.0, 23.0, 25.0],
                        [10.0, 8.0, 66.0, 232.0],
                        [0.0, 0.0, 111.9, 111.9],
                        [-20.0, 4.0, 204.0, 228.0],
                    ]
                )
            ),
            Boxes(
                torch.tensor(
                    [[12.5, 7.25, 162.5, 607.25], [0, 0, 448.0, 448.0], [-300, -300, 600, 600]]
                )
            ),
        ]

    def test_levels_match_fpn_assignment(self):
        pooler = PrRoIPooler(5, SCALES, sampling_ratio=0, pooler_type="PrRoIPool")
        out = pooler(self.features, self.boxes)
        self.assertEqual(tuple(out.shape), (7, 3, 5, 5))
        row = 0
        levels = []
        for image, boxes in enumerate(self.boxes):
            for box in boxes.tensor.tolist():
                level = fpn_level(box)
                levels.append(level)
                roi = torch.tensor([[image] + box])
                expected = prroi_pool(self.features[level - 2], roi, 5, SCALES[level - 2])
                torch.testing.assert_close(out[row : row + 1], expected, rtol=0, atol=0)
                row += 1
        self.assertEqual(levels, [2, 3, 2, 4, 4, 5, 5])

    def test_half_precision_features_keep_float32_boxes(self):
        """bfloat16 / float16 features (autocast): the boxes stay float32, so a box at 1000.3 px
        pools what float32 features cast to half pool at exactly that box (in half precision
        1000.3 would be 1000.0 (float16) or 1000 rounded to 4 px (bfloat16))."""
        generator = torch.Generator().manual_seed(1)
        features = torch.randn(1, 3, 40, 48, generator=generator)
        boxes = [Boxes(torch.tensor([[1000.3, 905.7, 1130.1, 1022.9], [3.3, 2.1, 40.7, 9.9]]))]
        pooler = PrRoIPooler(4, [1 / 32], sampling_ratio=0, pooler_type="PrRoIPool")
        for half in (torch.bfloat16, torch.float16):
            out = pooler([features.to(half)], boxes)
            self.assertEqual(out.dtype, half)
            rois = torch.cat([torch.zeros(2, 1), boxes[0].tensor], dim=1)
            exact = prroi_pool(features.to(half).float(), rois, 4, 1 / 32).to(half)
            torch.testing.assert_close(out, exact, rtol=0, atol=0)
            rounded = prroi_pool(features.to(half).float(), rois.to(half).float(), 4, 1 / 32)
            self.assertFalse(torch.equal(out, rounded.to(half)))

    def test_single_level_is_the_op(self):
        pooler = PrRoIPooler((3, 4), [1 / 8], sampling_ratio=2, pooler_type="PrRoIPool")
        out = pooler([self.features[1]], self.boxes)
        batch = torch.tensor([[0.0]] * 4 + [[1.0]] * 3)
        rois = torch.cat([batch, Boxes.cat(self.boxes).tensor], dim=1)
        torch.testing.assert_close(out, prroi_pool(self.features[1], rois, (3, 4), 1 / 8))

    def test_gradient_flows_to_boxes_and_features(self):
        pooler = PrRoIPooler(4, SCALES, sampling_ratio=0, pooler_type="PrRoIPool")
        features = [f.clone().requires_grad_() for f in self.features]
        coords = [b.tensor.clone().requires_grad_() for b in self.boxes]  # Boxes are float32
        weight = torch.randn(7, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        (pooler(features, [Boxes(c) for c in coords]) * weight).sum().backward()
        # the same gradients through the single-level op, box by box
        for image, c in enumerate(coords):
            for i, box in enumerate(c.detach().tolist()):
                level = fpn_level(box) - 2
                roi = torch.tensor([[image] + box], requires_grad=True)
                row = image * len(self.boxes[0]) + i
                pooled = prroi_pool(self.features[level], roi, 4, SCALES[level])
                (pooled * weight[row]).sum().backward()
                torch.testing.assert_close(c.grad[i], roi.grad[0, 1:])
        self.assertGreater(coords[0].grad.abs().min().item(), 0)
        self.assertTrue(all(f.grad is not None and f.grad.abs().sum() > 0 for f in features))

    def test_empty(self):
        pooler = PrRoIPooler(7, SCALES, sampling_ratio=0, pooler_type="PrRoIPool")
        out = pooler(self.features, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))])
        self.assertEqual(tuple(out.shape), (0, 3, 7, 7))
        no_images = [f[:0] for f in self.features]
        self.assertEqual(tuple(pooler(no_images, []).shape), (0, 3, 7, 7))

    def test_build_roi_pooler(self):
        args = dict(output_size=7, scales=SCALES, sampling_ratio=2)
        self.assertIsInstance(build_roi_pooler(pooler_type="PrRoIPool", **args), PrRoIPooler)
        align = build_roi_pooler(pooler_type="ROIAlignV2", **args)
        self.assertIsInstance(align, ROIPooler)
        # ROIPooler on the same boxes: same level split, different pooling of the same region
        # (exact integral vs 2x2 samples), so close but not equal on smooth-ish features.
        smooth = [torch.nn.functional.avg_pool2d(f, 5, 1, 2) for f in self.features]
        pr = build_roi_pooler(pooler_type="PrRoIPool", **args)(smooth, self.boxes)
        ra = align(smooth, self.boxes)
        self.assertLess((pr - ra).abs().mean().item(), 0.25 * ra.abs().mean().item())

    def test_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, "pooler_type"):
            PrRoIPooler(7, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
        with self.assertRaisesRegex(ValueError, "powers of 2"):
            PrRoIPooler(7, [1 / 3], sampling_ratio=0, pooler_type="PrRoIPool")
        with self.assertRaisesRegex(ValueError, "pyramid"):
            PrRoIPooler(7, [1 / 4, 1 / 16], sampling_ratio=0, pooler_type="PrRoIPool")
        pooler = PrRoIPooler(7, SCALES, sampling_ratio=0, pooler_type="PrRoIPool")
        with self.assertRaisesRegex(ValueError, "feature maps"):
            pooler(self.features[:2], self.boxes)


if __name__ == "__main__":
    unittest.main()
