"""Precise RoI Pooling: C++/CUDA kernels against the float64 midpoint-rule reference, analytic
oracles, gradcheck w.r.t. features and box coordinates, and edge cases."""

import unittest

import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from d2align.ops import PrRoIPool, prroi_pool, prroi_pool_reference

SAMPLES_PER_CELL = 32


def reference_tolerance(features: torch.Tensor) -> float:
    """Midpoint-rule bound of prroi_pool_reference: 2 max|w| / samples_per_cell^2."""
    return 2 * features.abs().max().item() / SAMPLES_PER_CELL**2


def random_rois(num_images, height, width, scale, generator):
    """Boxes in image pixels on an (height / scale) x (width / scale) image: ordinary boxes,
    sub-cell boxes, boxes partly and wholly outside the map, and off-grid coordinates."""
    img_h, img_w = height / scale, width / scale
    rows = []
    for _ in range(6):  # ordinary boxes
        x1, y1 = torch.rand(2, generator=generator).tolist()
        w, h = (0.1 + 0.8 * torch.rand(2, generator=generator)).tolist()
        x1, y1 = x1 * 0.7, y1 * 0.7
        rows.append([x1 * img_w, y1 * img_h, (x1 + w) * img_w, (y1 + h) * img_h])
    for _ in range(4):  # sub-cell: smaller than one feature cell on both axes
        cx, cy = (torch.rand(2, generator=generator) * torch.tensor([img_w, img_h])).tolist()
        w, h = (torch.rand(2, generator=generator) * 0.9 / scale).tolist()
        rows.append([cx, cy, cx + w + 1e-3, cy + h + 1e-3])
    rows.append([-0.6 * img_w, -0.3 * img_h, 0.35 * img_w, 0.4 * img_h])  # partly outside
    rows.append([0.8 * img_w, 0.7 * img_h, 1.4 * img_w, 1.2 * img_h])  # partly outside
    rows.append([-0.9 * img_w, 0.1 * img_h, -0.2 * img_w, 0.9 * img_h])  # wholly outside
    rows.append([1.01 * img_w, 1.05 * img_h, 1.6 * img_w, 1.9 * img_h])  # outside, in the fade
    rows.append([-3 / scale, -2 / scale, img_w + 2.7 / scale, img_h + 1.3 / scale])  # covers all
    boxes = torch.tensor(rows, dtype=torch.float64)
    batch = torch.randint(num_images, (len(rows), 1), generator=generator).to(torch.float64)
    return torch.cat([batch, boxes], dim=1)


class TestPrRoIPool(unittest.TestCase):
    def _test_forward_matches_reference(self, device):
        generator = torch.Generator().manual_seed(0)
        for (h, w), scale, output_size in [((7, 9), 0.5, (2, 3)), ((5, 6), 0.25, 3)]:
            x = torch.randn(2, 3, h, w, generator=generator, dtype=torch.float64)
            rois = random_rois(2, h, w, scale, generator)
            expected = prroi_pool_reference(x, rois, output_size, scale, SAMPLES_PER_CELL)
            actual = prroi_pool(x.to(device), rois.to(device), output_size, scale).cpu()
            torch.testing.assert_close(
                actual, expected, rtol=0, atol=reference_tolerance(x), msg=f"size {(h, w)}"
            )
            # Wholly outside (beyond the fade) gives exactly 0; the fading box does not.
            self.assertEqual(actual[12].abs().max().item(), 0.0)
            self.assertGreater(actual[13].abs().max().item(), 0.0)

    def test_forward_matches_reference_cpu(self):
        self._test_forward_matches_reference("cpu")

    def test_float32_matches_float64(self):
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
        rois = random_rois(2, 8, 8, 0.5, generator)
        out64 = prroi_pool(x, rois, 4, 0.5)
        out32 = prroi_pool(x.float(), rois.float(), 4, 0.5)
        torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)

    def test_constant_map(self):
        # Inside the map the bilinear surface of a constant map is that constant; a box whose
        # feature coordinates span [-0.5, W - 0.5] sees a half-cell fade (to 0 at -1) at its
        # borders: its corner bin of width 1 averages (int_{-0.5}^{0.5} f) = 0.875 per axis.
        x = torch.full((1, 2, 6, 8), 3.0, dtype=torch.float64)
        inside = torch.tensor(
            [[0, 0.5, 0.5, 7.5, 5.5], [0, 2.7, 1.3, 4.1, 1.9]], dtype=torch.float64
        )
        out = prroi_pool(x, inside, (2, 3), 1.0)
        torch.testing.assert_close(out, torch.full_like(out, 3.0))
        whole = torch.tensor([[0, 0, 0, 8, 6]], dtype=torch.float64)
        out = prroi_pool(x, whole, (6, 8), 1.0)
        self.assertAlmostEqual(out[0, 0, 0, 0].item(), 3.0 * 0.875 * 0.875)
        self.assertAlmostEqual(out[0, 0, 0, 3].item(), 3.0 * 0.875)
        self.assertAlmostEqual(out[0, 1, 3, 4].item(), 3.0)

    def test_cell_aligned_bins_are_avg_pool(self):
        # Bins that are exactly the cells [i, i+1] x [j, j+1] average the bilinear patch, which is
        # the mean of the cell's four corner pixels: avg_pool2d(kernel 2, stride 1).
        generator = torch.Generator().manual_seed(2)
        x = torch.randn(2, 3, 6, 7, generator=generator, dtype=torch.float64)
        h, w = x.shape[-2:]
        # feature coordinate = 0.5 * image - 0.5, so image 1 -> 0 and 2W - 1 -> W - 1
        rois = torch.tensor([[1, 1.0, 1.0, 2 * w - 1.0, 2 * h - 1.0]], dtype=torch.float64)
        out = prroi_pool(x, rois, (h - 1, w - 1), 0.5)
        torch.testing.assert_close(out[0], F.avg_pool2d(x, 2, stride=1)[1])

    def test_linear_map_gives_bin_center(self):
        # f(x, y) = 2x - 3y + 1 inside the map; a bin's mean of a linear function is its center
        # value (hand-worked: box [1.5, 2.5] x [1.5, 3.5] image px at scale 1 -> feature
        # [1, 2] x [1, 3], one bin, center (1.5, 2) -> 2 * 1.5 - 3 * 2 + 1 = -2).
        jj, ii = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
        x = (2 * ii - 3 * jj + 1).to(torch.float64)[None, None]
        out = prroi_pool(x, torch.tensor([[0, 1.5, 1.5, 2.5, 3.5]], dtype=torch.float64), 1, 1.0)
        self.assertAlmostEqual(out.item(), -2.0)

    def _test_gradcheck(self, device):
        generator = torch.Generator().manual_seed(3)
        x = torch.randn(2, 2, 5, 6, generator=generator, dtype=torch.float64, device=device)
        # Feature coordinates (u * 0.5 - 0.5) kept off the integer grid: sub-cell, partly
        # outside, wholly inside, covering everything.
        coords = torch.tensor(
            [
                [2.3, 3.1, 9.7, 8.2],
                [4.13, 4.37, 4.91, 5.29],
                [-5.1, -3.3, 3.3, 2.9],
                [7.3, 6.1, 14.5, 12.7],
                [-2.9, -1.7, 13.3, 11.1],
            ],
            dtype=torch.float64,
            device=device,
        )
        batch = torch.tensor([[0.0], [1], [1], [0], [1]], dtype=torch.float64, device=device)

        def pool(features, boxes):
            return prroi_pool(features, torch.cat([batch, boxes], dim=1), (2, 3), 0.5)

        self.assertTrue(
            gradcheck(pool, (x.requires_grad_(), coords.requires_grad_()), atol=1e-6, rtol=1e-4)
        )

    def test_gradcheck_cpu(self):
        self._test_gradcheck("cpu")

    def test_box_gradient_eq4(self):
        # Eq. (4) for a single bin: d PrPool / d x1 = PrPool / (x2 - x1) - int f(x1, y) dy / area.
        # On the map w[j, i] = i (f = x inside the map) and the bin [a, b] x [c, d]:
        # PrPool = (a + b) / 2 and eq. (4) gives (a + b) / 2 / (b - a) - a / (b - a) = 1/2 for x1,
        # likewise 1/2 for x2, and 0 for y1, y2 (f does not depend on y).
        x = torch.arange(8.0, dtype=torch.float64).repeat(6, 1)[None, None]
        rois = torch.tensor([[0, 2.2, 1.7, 5.9, 4.6]], dtype=torch.float64, requires_grad=True)
        prroi_pool(x, rois, 1, 1.0).sum().backward()
        torch.testing.assert_close(
            rois.grad, torch.tensor([[0, 0.5, 0, 0.5, 0]], dtype=torch.float64)
        )

    def test_empty_rois(self):
        x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        rois = torch.zeros((0, 5), dtype=torch.float64, requires_grad=True)
        out = prroi_pool(x, rois, (2, 4), 0.5)
        self.assertEqual(tuple(out.shape), (0, 3, 2, 4))
        out.sum().backward()
        torch.testing.assert_close(x.grad, torch.zeros_like(x))
        self.assertEqual(tuple(rois.grad.shape), (0, 5))

    def test_zero_size_boxes(self):
        x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
        rois = torch.tensor(
            [[0, 3.3, 1.2, 3.3, 4.0], [0, 1.0, 2.5, 4.0, 2.5], [0, 4.0, 4.0, 1.0, 1.0]],
            dtype=torch.float64,
            requires_grad=True,
        )
        out = prroi_pool(x, rois, 2, 1.0)
        self.assertEqual(out.abs().max().item(), 0.0)
        out.sum().backward()
        self.assertEqual(x.grad.abs().max().item(), 0.0)
        self.assertEqual(rois.grad.abs().max().item(), 0.0)

    def test_half_is_pooled_in_float(self):
        x = torch.randn(1, 2, 6, 6)
        rois = torch.tensor([[0, 1.2, 0.7, 9.1, 8.3]])
        out = prroi_pool(x.half(), rois.half(), 2, 0.5)
        self.assertEqual(out.dtype, torch.float16)
        expected = prroi_pool(x.half().float(), rois.half().float(), 2, 0.5).half()
        torch.testing.assert_close(out, expected, atol=0, rtol=0)

    def test_bad_inputs(self):
        x = torch.randn(2, 3, 5, 5)
        good = torch.tensor([[0, 1.0, 1.0, 3.0, 3.0]])
        with self.assertRaisesRegex(ValueError, r"shape \(R, 5\)"):
            prroi_pool(x, good[:, 1:], 2, 1.0)
        with self.assertRaisesRegex(TypeError, "dtype"):
            prroi_pool(x, good.double(), 2, 1.0)
        with self.assertRaisesRegex(ValueError, "non-finite"):
            prroi_pool(x, torch.tensor([[0, 1.0, float("nan"), 3.0, 3.0]]), 2, 1.0)
        with self.assertRaisesRegex(ValueError, "batch indices"):
            prroi_pool(x, torch.tensor([[2, 1.0, 1.0, 3.0, 3.0]]), 2, 1.0)
        with self.assertRaisesRegex(ValueError, "output_size"):
            prroi_pool(x, good, (2, 0), 1.0)
        with self.assertRaisesRegex(ValueError, r"\(N, C, H, W\)"):
            prroi_pool(x[0], good, 2, 1.0)

    def test_module(self):
        module = PrRoIPool((2, 3), 0.25)
        self.assertEqual(repr(module), "PrRoIPool(output_size=(2, 3), spatial_scale=0.25)")
        x = torch.randn(1, 2, 6, 6)
        rois = torch.tensor([[0, 2.0, 3.0, 17.0, 19.0]])
        torch.testing.assert_close(module(x, rois), prroi_pool(x, rois, (2, 3), 0.25))

    @unittest.skipIf(not torch.cuda.is_available(), "CUDA not available")
    def test_forward_matches_reference_cuda(self):
        self._test_forward_matches_reference("cuda")

    @unittest.skipIf(not torch.cuda.is_available(), "CUDA not available")
    def test_gradcheck_cuda(self):
        self._test_gradcheck("cuda")

    @unittest.skipIf(not torch.cuda.is_available(), "CUDA not available")
    def test_cuda_matches_cpu(self):
        generator = torch.Generator().manual_seed(4)
        for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 1e-4)]:
            x = torch.randn(2, 5, 9, 11, generator=generator).to(dtype)
            rois = random_rois(2, 9, 11, 0.5, generator).to(dtype)
            grad = torch.randn(rois.shape[0], 5, 3, 4, generator=generator).to(dtype)
            results = []
            for device in ["cpu", "cuda"]:
                xd = x.to(device).requires_grad_()
                rd = rois.to(device).requires_grad_()
                out = prroi_pool(xd, rd, (3, 4), 0.5)
                out.backward(grad.to(device))
                results.append([t.cpu() for t in (out, xd.grad, rd.grad)])
            for cpu, cuda in zip(*results):
                torch.testing.assert_close(cuda, cpu, rtol=tol, atol=tol)


if __name__ == "__main__":
    unittest.main()
