"""Speed of Precise RoI Pooling against detectron2's ROIAlignV2 on FPN-like inputs.

Both poolers run forward + backward (to the features; PrRoI also with the box gradient that
IoU-Net's refinement needs) on the same inputs in the same run, repeats interleaved, and the
ratio of median times is printed. detectron2's "ROIAlignV2" is torchvision's ``roi_align``
with aligned=True, here with sampling_ratio=2. Boxes are assigned to P2-P5 by the poolers as in FPN.

Usage:
    python benchmarks/bench_prroi_pool.py [--device cpu|cuda] [--repeats 5] [--threads N]
        [--image 800 1216] [--output-sizes 7 14]
"""

import argparse
import statistics
import time

import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from d2align.ops import PrRoIPooler

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def make_inputs(args, device, generator):
    """Features for P2-P5 and `args.rois` boxes split over the batch, sizes log-uniform."""
    h, w = args.image
    features = [
        torch.randn(args.batch, args.channels, h // 4 // 2**i, w // 4 // 2**i, generator=generator)
        for i in range(len(SCALES))
    ]
    box_lists = []
    for n in [args.rois // args.batch] * args.batch:
        size = torch.exp(torch.empty(n).uniform_(3.0, 6.5, generator=generator))  # 20..665 px
        aspect = torch.exp(torch.empty(n).uniform_(-0.7, 0.7, generator=generator))
        bw, bh = size * aspect.sqrt(), size / aspect.sqrt()
        cx = torch.rand(n, generator=generator) * w
        cy = torch.rand(n, generator=generator) * h
        xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        box_lists.append(Boxes(xyxy.to(device)))
    return [f.to(device).requires_grad_() for f in features], box_lists


def time_fwd_bwd(pooler, features, box_lists, device, box_grad=False):
    """Seconds for one forward + backward."""
    for f in features:
        f.grad = None
    boxes = [Boxes(b.tensor.detach().requires_grad_(box_grad)) for b in box_lists]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = pooler(features, boxes)
    out.backward(torch.ones_like(out))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_times(runs, repeats):
    """Median seconds of each (name -> no-argument callable), runs interleaved so that all see
    the same machine load; the first round warms up."""
    times = {name: [] for name in runs}
    for _ in range(repeats + 1):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rois", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--image", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--output-sizes", type=int, nargs="+", default=[7, 14])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    features, box_lists = make_inputs(args, device, generator)

    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch} "
        f"channels={args.channels} image={args.image[0]}x{args.image[1]} rois={args.rois}, "
        f"forward+backward, median of {args.repeats}"
    )
    header = f"{'output':>7} {'ROIAlignV2 ms':>14} {'PrRoIPool ms':>13} {'ratio':>6}"
    header += f" {'PrRoI+box grad ms':>18} {'ratio':>6}"
    print(header)
    for size in args.output_sizes:
        align = ROIPooler(size, SCALES, sampling_ratio=2, pooler_type="ROIAlignV2")
        prroi = PrRoIPooler(size, SCALES, sampling_ratio=0, pooler_type="PrRoIPool")
        t = median_times(
            {
                "align": lambda: time_fwd_bwd(align, features, box_lists, device),
                "prroi": lambda: time_fwd_bwd(prroi, features, box_lists, device),
                "box": lambda: time_fwd_bwd(prroi, features, box_lists, device, box_grad=True),
            },
            args.repeats,
        )
        t_align, t_pr, t_box = t["align"], t["prroi"], t["box"]
        print(
            f"{size:>3}x{size:<3} {t_align * 1e3:>14.1f} {t_pr * 1e3:>13.1f} {t_pr / t_align:>6.2f}"
            f" {t_box * 1e3:>18.1f} {t_box / t_align:>6.2f}"
        )


if __name__ == "__main__":
    main()
