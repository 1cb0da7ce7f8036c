#!/usr/bin/env python
"""Misalignment diagnostics of an IoU-Net checkpoint (IoU-Net §2.1, Fig. 2 and Fig. 3).

On the first test set of the config, for the detections of the checkpoint before NMS (after
box regression, score > TEST.SCORE_THRESH_TEST), each matched to the ground-truth box of its
class it overlaps most:

* Fig. 2: Pearson correlation, over detections with IoU > 0.5, between the IoU and (a) the
  classification score, (b) the predicted IoU; scatter plots of both;
* Fig. 3: the number of positive boxes grouped by IoU with their GT, for no NMS, standard NMS
  (ranked by classification score) and IoU-guided NMS (ranked by predicted IoU), both at
  MODEL.IOU_NET.NMS_THRESH.

    python projects/IoUNet/diagnose.py --config-file <iounet config> --weights <model.pth> \
        [--out DIR] [--max-images N] [KEY VALUE ...]

Writes fig2a_cls_score_vs_iou.png, fig2b_pred_iou_vs_iou.png, fig3_positives_by_iou.png and
diagnostics.json into --out (default: OUTPUT_DIR/diagnostics) and prints the numbers.
"""

import argparse
import json
import math
import os

import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from torchvision.ops import batched_nms

from d2align.checkpoint import D2AlignCheckpointer
from d2align.diagnostics import (
    IOU_BIN_EDGES,
    MisalignmentAccumulator,
    plot_positives_by_iou,
    plot_score_vs_iou,
)
from d2align.engine import load_config
from d2align.ops import batched_iou_guided_nms
from d2align.projects.iou_net import IoUNetROIHeads, add_iou_net_config

METHODS = ("No-NMS", "NMS", "IoU-NMS")


def gt_of(record):
    """(Tensor[G, 4] XYXY boxes, Tensor[G] classes) of a dataset dict, in original pixels."""
    annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
    return (
        torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        torch.tensor([a["category_id"] for a in annos], dtype=torch.int64),
    )


@torch.no_grad()
def candidates_of(model, inputs):
    """Pre-NMS detections of one image in original pixels: boxes, scores, classes, pred IoU,
    on the CPU whatever the model's device."""
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features)
    ((boxes, scores, classes, iou_fn),) = model.roi_heads.predict_candidates(features, proposals)
    pred_ious = iou_fn(boxes, classes)
    in_h, in_w = inputs["image"].shape[-2:]
    scale = torch.tensor([inputs["width"] / in_w, inputs["height"] / in_h] * 2)
    return (boxes.cpu() * scale, scores.float().cpu(), classes.cpu(), pred_ious.float().cpu())


def diagnose(model, cfg, dataset, max_images):
    """Accumulate the Fig. 2 samples and the Fig. 3 counts over `dataset`."""
    records = {r["image_id"]: r for r in DatasetCatalog.get(dataset)}
    thresh = cfg.MODEL.IOU_NET.NMS_THRESH
    acc = MisalignmentAccumulator(["cls_score", "pred_iou"], METHODS)
    for n, (inputs,) in enumerate(build_detection_test_loader(cfg, dataset)):
        if 0 <= max_images <= n:
            break
        boxes, scores, classes, loc = candidates_of(model, inputs)
        gt_boxes, gt_classes = gt_of(records[inputs["image_id"]])
        kept = {
            "No-NMS": torch.arange(len(boxes)),
            "NMS": batched_nms(boxes, scores, classes, thresh),
            "IoU-NMS": batched_iou_guided_nms(boxes, scores, loc, classes, thresh)[0],
        }
        confidences = {"cls_score": scores, "pred_iou": loc}
        acc.add_image(boxes, classes, confidences, gt_boxes, gt_classes, kept)
    return acc.ious, acc.confidence("cls_score"), acc.confidence("pred_iou"), acc.counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="checkpoint (default: MODEL.WEIGHTS)")
    parser.add_argument("--out", default="", help="default: OUTPUT_DIR/diagnostics")
    parser.add_argument("--max-images", type=int, default=-1, help="< 0: the whole test set")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    cfg = load_config(args.config_file, args.opts, [add_iou_net_config])
    model = build_model(cfg).eval()
    if not isinstance(model.roi_heads, IoUNetROIHeads):
        raise ValueError(
            f"{args.config_file}: MODEL.ROI_HEADS.NAME must be 'IoUNetROIHeads' (a model with "
            f"an IoU predictor), got {cfg.MODEL.ROI_HEADS.NAME!r}"
        )
    D2AlignCheckpointer.from_config(cfg, model, eval_only=True).load(
        args.weights or cfg.MODEL.WEIGHTS
    )
    if not cfg.DATASETS.TEST:
        raise ValueError(f"{args.config_file}: DATASETS.TEST is empty")
    dataset = cfg.DATASETS.TEST[0]
    out = args.out or os.path.join(cfg.OUTPUT_DIR, "diagnostics")

    ious, cls_scores, pred_ious, counts = diagnose(model, cfg, dataset, args.max_images)
    title = f"{os.path.basename(args.config_file)}\non {dataset}"  # two lines: fits the plot
    r_cls = plot_score_vs_iou(
        ious, cls_scores, os.path.join(out, "fig2a_cls_score_vs_iou.png"), title
    )
    r_loc = plot_score_vs_iou(
        ious,
        pred_ious,
        os.path.join(out, "fig2b_pred_iou_vs_iou.png"),
        title,
        ylabel="localization confidence (predicted IoU)",
    )
    plot_positives_by_iou(counts, os.path.join(out, "fig3_positives_by_iou.png"), title=title)
    groups = [f"{lo:g}-{hi:g}" for lo, hi in zip(IOU_BIN_EDGES[:-1], IOU_BIN_EDGES[1:])]
    summary = {
        "config_file": args.config_file,
        "dataset": dataset,
        "num_detections_iou_gt_0.5": int((ious > 0.5).sum()),
        # null, not NaN (invalid JSON), when undefined (e.g. no detection with IoU > 0.5)
        "pearson_iou_vs_cls_score": r_cls if math.isfinite(r_cls) else None,
        "pearson_iou_vs_pred_iou": r_loc if math.isfinite(r_loc) else None,
        "positives_by_iou": {m: dict(zip(groups, c.tolist())) for m, c in counts.items()},
    }
    with open(os.path.join(out, "diagnostics.json"), "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    print(
        f"Pearson r (IoU > 0.5, n = {summary['num_detections_iou_gt_0.5']}): "
        f"classification score {r_cls:.3f}, predicted IoU {r_loc:.3f}"
    )
    print("positives by IoU group: " + " ".join(f"{g:>8}" for g in groups))
    for method, c in counts.items():
        print(f"{method:>23}: " + " ".join(f"{v:>8d}" for v in c.tolist()))
    print(f"figures and diagnostics.json in {out}")
    return summary


if __name__ == "__main__":
    main()
