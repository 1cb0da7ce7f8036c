#!/usr/bin/env python
"""What each grid stage of a CPM R-CNN (or Grid R-CNN) checkpoint does to the boxes (§3.2,
Table 3): on the first test set of the config, the detections that enter the cascade (after
the classification branch and NMS) are matched to the ground truth of their class they overlap
most; grouped by their IoU when entering stage 1, the mean IoU after every stage, the fraction
each stage improves, and the mean heatmap peak probability of each stage (a branch still at its
prior 0.01 has not learned to localize).

    python projects/CPMRCNN/stage_diagnostics.py --config-file <config> --weights <model.pth> \
        [--out DIR] [--max-images N] [KEY VALUE ...]

Writes stage_diagnostics.json and stage_iou.png (mean IoU after each stage, one line per
entering-IoU group) into --out (default: OUTPUT_DIR/stage_diagnostics) and prints the table.
Every stage of the checkpoint is run (MODEL.CPM_RCNN.TEST_STAGE is ignored).
"""

import argparse
import json
import os
from typing import Dict, List

import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from tqdm import tqdm

from d2align.checkpoint import D2AlignCheckpointer
from d2align.engine import load_config
from d2align.projects.cpm_rcnn import CPMROIHeads, add_cpm_rcnn_config

# groups of the IoU with which a detection enters stage 1
IOU_GROUPS = ((0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0001))


def matched_ious(boxes: torch.Tensor, classes: torch.Tensor, record) -> torch.Tensor:
    """Tensor[D]: each box's highest IoU with a non-crowd ground truth of its class (0 if none).

    Args:
        boxes (Tensor[D, 4]): XYXY in the record's (original) pixels.
        classes (Tensor[D]): contiguous class ids (the dataset's category ids here).
        record (dict): detectron2 dataset dict with "annotations".
    """
    annos = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    best = boxes.new_zeros(len(boxes))
    if not annos or not len(boxes):
        return best
    gt = torch.tensor(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
        dtype=boxes.dtype,
    )
    gt_classes = torch.tensor([a["category_id"] for a in annos])
    iou = pairwise_iou(Boxes(boxes), Boxes(gt))
    iou[classes[:, None] != gt_classes[None, :]] = 0.0
    return iou.max(dim=1).values


@torch.no_grad()
def stage_boxes(model, inputs):
    """One image through the classification branch, NMS and every grid stage.

    Returns:
        boxes (list[Tensor[D, 4]]): the boxes entering stage 1, then after each stage, in the
            image's original pixels; classes (Tensor[D]); peaks (list[Tensor[D, G]]): each
            stage's heatmap peak probabilities; all on the CPU whatever the model's device.
    """
    heads: CPMROIHeads = model.roi_heads
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features)
    probs = heads.classify(features, proposals)
    entering, _, classes = heads.select_detections(proposals, probs)
    after, peaks = heads.cascade_boxes(
        features, entering, [p.image_size for p in proposals], return_peaks=True
    )
    in_h, in_w = inputs["image"].shape[-2:]
    scale = torch.tensor([inputs["width"] / in_w, inputs["height"] / in_h] * 2)
    boxes = [entering[0].cpu() * scale] + [stage[0].cpu() * scale for stage in after]
    return boxes, classes[0].cpu(), [p.float().cpu() for p in peaks]


def summarize(ious: torch.Tensor, peaks: torch.Tensor) -> List[Dict]:
    """Rows of the table.

    Args:
        ious (Tensor[D, J + 1]): IoU entering stage 1, then after each of the J stages.
        peaks (Tensor[D, J]): mean heatmap peak probability of each stage, per detection.
    """
    rows = []
    for low, high in IOU_GROUPS:
        group = (ious[:, 0] >= low) & (ious[:, 0] < high)
        n = int(group.sum())
        row = {"entering_iou": [low, min(high, 1.0)], "count": n}
        if n:
            sel = ious[group]
            row["mean_iou"] = [round(v, 4) for v in sel.mean(dim=0).tolist()]
            row["improved_by_stage"] = [
                round(float((sel[:, j + 1] > sel[:, j]).float().mean()), 3)
                for j in range(sel.shape[1] - 1)
            ]
            row["mean_peak_by_stage"] = [round(v, 4) for v in peaks[group].mean(dim=0).tolist()]
        rows.append(row)
    return rows


def plot(rows: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for row in rows:
        if row["count"]:
            low, high = row["entering_iou"]
            stages = range(len(row["mean_iou"]))
            ax.plot(stages, row["mean_iou"], marker="o", label=f"[{low}, {high}) n={row['count']}")
    ax.set_xlabel("grid stage (0: entering stage 1)")
    ax.set_ylabel("mean IoU with the ground truth")
    ax.set_title("IoU of the detections after each grid stage")
    ax.legend(title="entering IoU", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint (.pth)")
    parser.add_argument("--out", default=None, help="default: OUTPUT_DIR/stage_diagnostics")
    parser.add_argument("--max-images", type=int, default=-1, help="-1: the whole test set")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts, [add_cpm_rcnn_config])
    if not cfg.DATASETS.TEST:
        parser.error(f"{args.config_file} has no DATASETS.TEST to diagnose")
    num_stages = cfg.MODEL.CPM_RCNN.NUM_STAGES
    cfg.defrost()
    cfg.MODEL.CPM_RCNN.TEST_STAGE = num_stages
    cfg.freeze()
    model = build_model(cfg)
    if not isinstance(model.roi_heads, CPMROIHeads):
        parser.error(f"MODEL.ROI_HEADS.NAME of {args.config_file} is not CPMROIHeads")
    D2AlignCheckpointer.from_config(cfg, model, eval_only=True).load(args.weights)
    model.eval()
    dataset = cfg.DATASETS.TEST[0]
    records = {r["image_id"]: r for r in DatasetCatalog.get(dataset)}
    loader = build_detection_test_loader(cfg, dataset)
    total = len(records) if args.max_images < 0 else min(args.max_images, len(records))
    all_ious, all_peaks = [], []
    for n, (inputs,) in enumerate(tqdm(loader, total=total, desc="stage diagnostics")):
        if n >= total:
            break
        boxes, classes, peaks = stage_boxes(model, inputs)
        record = records[inputs["image_id"]]
        all_ious.append(torch.stack([matched_ious(b, classes, record) for b in boxes], dim=1))
        all_peaks.append(torch.stack([p.mean(dim=1) for p in peaks], dim=1))
    ious = torch.cat(all_ious) if all_ious else torch.zeros(0, num_stages + 1)
    peaks = torch.cat(all_peaks) if all_peaks else torch.zeros(0, num_stages)
    rows = summarize(ious, peaks)
    out = args.out or os.path.join(cfg.OUTPUT_DIR, "stage_diagnostics")
    os.makedirs(out, exist_ok=True)
    result = {"weights": args.weights, "dataset": dataset, "images": total,
              "stages": num_stages, "rows": rows}  # fmt: skip
    with open(os.path.join(out, "stage_diagnostics.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, os.path.join(out, "stage_iou.png"))
    print(
        f"{dataset}, {total} images, {num_stages} stage(s); mean IoU entering -> after each stage"
    )
    for row in rows:
        low, high = row["entering_iou"]
        if not row["count"]:
            print(f"  IoU [{low}, {high}): no detection")
            continue
        chain = " -> ".join(f"{v:.3f}" for v in row["mean_iou"])
        print(
            f"  IoU [{low}, {high}): n={row['count']:4d}  {chain}  improved "
            f"{row['improved_by_stage']}  heatmap peak {row['mean_peak_by_stage']}"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
