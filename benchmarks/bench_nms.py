"""Speed of the NMS family against torchvision's `batched_nms`, measured in the same run.

Inputs mimic a detector's raw output on one 1333x800 image: N boxes over 80 classes, jittered
around N/25 objects (so that most boxes have duplicates), uniform classification and
localization scores. For each N the table gives the median time of each op and its ratio to
`batched_nms` with the same boxes, classes and threshold 0.5 (Soft-NMS at its defaults).

    python benchmarks/bench_nms.py [--device cpu|cuda] [--sizes 1000 5000 20000] [--repeats 7]
                                   [--threads T]

On a CPU shared with other jobs, torch's parallel regions (in batched_nms's per-class loop)
can wait for a scheduler time slice; `--threads 1` gives steadier figures.
"""

import argparse
import statistics
import time

import torch
from torchvision.ops import batched_nms

from d2align.ops import batched_cl_balanced_nms, batched_iou_guided_nms, batched_soft_nms


def detector_like_inputs(n, num_classes=80, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    num_objects = max(n // 25, 1)
    wh = 16 + 300 * torch.rand(num_objects, 2, generator=g) ** 2
    xy = torch.rand(num_objects, 2, generator=g) * (torch.tensor([1333.0, 800.0]) - wh)
    objects = torch.cat([xy, xy + wh], dim=1)
    object_class = torch.randint(num_classes, (num_objects,), generator=g)
    which = torch.randint(num_objects, (n,), generator=g)
    size = wh[which].repeat(1, 2)
    boxes = objects[which] + 0.1 * size * torch.randn(n, 4, generator=g)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    # most duplicates carry their object's class, some are confused with another class
    idxs = torch.where(
        torch.rand(n, generator=g) < 0.8,
        object_class[which],
        torch.randint(num_classes, (n,), generator=g),
    )
    cls, loc = torch.rand(n, generator=g), torch.rand(n, generator=g)
    return [t.to(device) for t in (boxes, cls, loc, idxs)]


def measure(fn, device, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={torch.get_num_threads()} repeats={args.repeats}")
    header = f"{'N':>6} {'op':<26} {'median ms':>10} {'x batched_nms':>14} {'kept':>6}"
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        boxes, cls, loc, idxs = detector_like_inputs(n, device=args.device)
        ops = {
            "torchvision batched_nms": lambda: (batched_nms(boxes, cls, idxs, 0.5),),
            "iou_guided_nms": lambda: batched_iou_guided_nms(boxes, cls, loc, idxs, 0.5),
            "soft_nms linear": lambda: batched_soft_nms(boxes, cls, idxs, "linear"),
            "soft_nms gaussian": lambda: batched_soft_nms(boxes, cls, idxs, "gaussian"),
            "cl_balanced_nms": lambda: batched_cl_balanced_nms(boxes, cls, idxs, 0.5),
        }
        base = None
        for name, fn in ops.items():
            t = measure(fn, args.device, args.repeats)
            base = base or t
            kept = len(fn()[0])
            print(f"{n:>6} {name:<26} {1e3 * t:>10.3f} {t / base:>14.2f} {kept:>6}")


if __name__ == "__main__":
    main()
