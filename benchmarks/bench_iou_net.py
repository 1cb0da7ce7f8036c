#!/usr/bin/env python
"""Inference time of IoU-Net (IoU-guided NMS + refinement) against its FPN baseline, same run.

The two models are built from the same config (the FPN baseline is the IoU-Net config with
`MODEL.ROI_HEADS.NAME D2AlignStandardROIHeads`) and share the same weights (the baseline loads
the IoU-Net checkpoint without its IoU branch), so they produce the same candidate boxes and
the difference is exactly IoU-Net's inference: predicted IoU of the candidates, IoU-guided
NMS and Algorithm 2 on the top detections. Images of the config's test set are run through
both models alternately; the table gives the median seconds per image and the ratio (the paper
reports 0.305 s vs 0.255 s, 1.20x, ResNet-50-FPN at 1200x800 on a TITAN X).

    python benchmarks/bench_iou_net.py \
        [--config-file projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml] \
        [--weights model_final.pth] [--num-images 20] [--device cpu|cuda] [KEY VALUE ...]

The IoU-Net time is also split into its NMS stage (predicted IoU of every candidate + the NMS)
and its refinement (Algorithm 2), in ms per image. The paper's regime is a large input where the
backbone dominates: add `INPUT.MIN_SIZE_TEST 800 INPUT.MAX_SIZE_TEST 1333` to measure the same
weights at the paper's input scale.

Without --weights both models are randomly initialised: every class then passes the score
threshold for every proposal, many more candidates than a trained model has; the mean number
of candidates per image is printed so that runs can be compared.
"""

import argparse
import copy
import statistics
import time

import torch
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model

from d2align.checkpoint import D2AlignCheckpointer
from d2align.engine import load_config
from d2align.projects.iou_net import add_iou_net_config

DEFAULT_CONFIG = "projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml"


def timed(model, inputs, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        outputs = model([inputs])
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, outputs


class StageTimer:
    """Adds the wall time of `obj.name(...)` calls to `self.seconds[name]` (wraps the method on
    the instance)."""

    def __init__(self, obj, names):
        self.seconds = {name: 0.0 for name in names}
        for name in names:
            setattr(obj, name, self._timed(getattr(obj, name), name))

    def _timed(self, fn, name):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - start
            return out

        return wrapper

    def reset(self):
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--weights", default="", help="IoU-Net checkpoint (default: random)")
    parser.add_argument("--num-images", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    opts = list(args.opts) + ["MODEL.DEVICE", args.device]
    cfg = load_config(args.config_file, opts, [add_iou_net_config])
    base_cfg = copy.deepcopy(cfg)
    base_cfg.defrost()
    base_cfg.MODEL.ROI_HEADS.NAME = "D2AlignStandardROIHeads"
    base_cfg.freeze()

    torch.manual_seed(0)
    iou_net = build_model(cfg).eval()
    if args.weights:
        D2AlignCheckpointer.from_config(cfg, iou_net, eval_only=True).load(args.weights)
    baseline = build_model(base_cfg).eval()
    state = {k: v for k, v in iou_net.state_dict().items() if ".iou_branch." not in k}
    baseline.load_state_dict(state, strict=True)

    stages = StageTimer(iou_net.roi_heads.postprocessor, ["nms", "_refine"])
    times = {"FPN": [], "IoU-Net": []}
    candidates = []
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    for n, (inputs,) in enumerate(loader):
        if n >= args.warmup + args.num_images:
            break
        t_base, base_out = timed(baseline, inputs, args.device)
        if n == args.warmup:
            stages.reset()
        t_iou, _ = timed(iou_net, inputs, args.device)
        if n >= args.warmup:
            times["FPN"].append(t_base)
            times["IoU-Net"].append(t_iou)
            candidates.append(len(base_out[0]["instances"]))

    c = cfg.MODEL.IOU_NET
    print(
        f"config {args.config_file}, device {args.device}, {len(times['FPN'])} images, "
        f"weights {args.weights or 'random'}; IoU-Net: NMS {c.NMS_TYPE}, refine "
        f"{c.REFINE.ENABLED} (T={c.REFINE.MAX_ITERS}, top {c.REFINE.TOPK}); "
        f"{statistics.mean(candidates):.0f} detections/image"
    )
    base, iou = statistics.median(times["FPN"]), statistics.median(times["IoU-Net"])
    print("| model   | s/image |")
    print("|---------|---------|")
    print(f"| FPN     | {base:.4f}  |")
    print(f"| IoU-Net | {iou:.4f}  |")
    print(f"ratio IoU-Net / FPN: {iou / base:.2f}x (paper: 0.305 / 0.255 = 1.20x; goal <= 1.2x)")
    per_image = {k: 1e3 * v / len(times["FPN"]) for k, v in stages.seconds.items()}
    print(
        f"IoU-Net stages, mean ms/image: NMS stage (predicted IoU of the candidates + "
        f"{c.NMS_TYPE} NMS) {per_image['nms']:.1f}, refinement {per_image['_refine']:.1f}"
    )


if __name__ == "__main__":
    main()
