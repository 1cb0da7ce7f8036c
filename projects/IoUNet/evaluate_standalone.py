#!/usr/bin/env python
"""Evaluate "detector X + standalone IoU-Net" (IoU-Net §4.1-4.2, Tables 1-2) from two checkpoints.

The detector (any detectron2 / d2align config: Faster R-CNN, Cascade R-CNN, RetinaNet, ...) is
run with its NMS disabled, so that it returns its raw detections; the standalone IoU-Net then
applies its configured NMS (MODEL.IOU_NET.NMS_TYPE: standard, soft_linear, soft_gaussian,
iou_guided) and refinement (MODEL.IOU_NET.REFINE.*), and the result is evaluated with COCO AP
and AP50..AP90 on the detector config's test set.

    python projects/IoUNet/evaluate_standalone.py \
        --detector-config configs/shapes/faster_rcnn_R18_FPN_scratch.yaml \
        --detector-weights output/shapes/faster_rcnn_R18_FPN_scratch/model_final.pth \
        --iounet-config projects/IoUNet/configs/shapes/standalone_iounet_R18_FPN_scratch.yaml \
        --iounet-weights output/shapes/iounet/standalone_iounet_R18_FPN_scratch/model_final.pth \
        [--out DIR] [--detector-opts KEY VALUE ...] [--iounet-opts KEY VALUE ...]

Table 1 rows: --iounet-opts MODEL.IOU_NET.REFINE.ENABLED False MODEL.IOU_NET.NMS_TYPE
{standard, soft_linear, iou_guided}; Table 2 rows: MODEL.IOU_NET.NMS_TYPE standard with
REFINE.ENABLED False / True. Both models see the image at the detector config's test size.
Writes final_results.json (and the COCO results) into --out.
"""

import argparse
import json
import os

from detectron2.modeling import build_model

from d2align.checkpoint import D2AlignCheckpointer
from d2align.data.from_config import register_data_from_config
from d2align.engine import Trainer, build_config, write_final_results
from d2align.projects import config_hooks_for
from d2align.projects.iou_net import DetectorWithIoUNet, StandaloneIoUNet, add_iou_net_config

# the detector returns everything above its score threshold: IoU > 1 never holds
RAW_DETECTIONS = [
    "MODEL.ROI_HEADS.NMS_THRESH_TEST", "1.0",
    "MODEL.RETINANET.NMS_THRESH_TEST", "1.0",
    "TEST.DETECTIONS_PER_IMAGE", "100000",
]  # fmt: skip


def detector_config_hooks(config_file: str):
    """add_iou_net_config (the detector's NMS keys are overridden by name), plus the config
    function of the project the detector config belongs to."""
    hooks = [add_iou_net_config]
    hooks += [h for h in config_hooks_for(config_file) if h is not add_iou_net_config]
    return hooks


def build_models(args):
    """(detector config, DetectorWithIoUNet) with both checkpoints loaded, in eval mode."""
    det_opts = list(args.detector_opts) + RAW_DETECTIONS + ["OUTPUT_DIR", args.out]
    hooks = detector_config_hooks(args.detector_config)
    det_cfg = build_config(args.detector_config, det_opts, hooks)
    register_data_from_config(det_cfg)
    det_cfg.freeze()
    iou_cfg = build_config(args.iounet_config, args.iounet_opts, [add_iou_net_config])
    if iou_cfg.MODEL.META_ARCHITECTURE != "StandaloneIoUNet":
        raise ValueError(
            f"{args.iounet_config}: MODEL.META_ARCHITECTURE must be 'StandaloneIoUNet', got "
            f"{iou_cfg.MODEL.META_ARCHITECTURE!r}"
        )
    if iou_cfg.MODEL.ROI_HEADS.NUM_CLASSES != det_cfg.MODEL.ROI_HEADS.NUM_CLASSES and (
        "RetinaNet" not in det_cfg.MODEL.META_ARCHITECTURE
    ):
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES differs: detector {det_cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
            f", standalone IoU-Net {iou_cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
        )
    iou_cfg.freeze()
    detector = build_model(det_cfg)
    # D2AlignCheckpointer: no code runs from a weights file, and a checkpoint that does not fit
    # the model is refused (D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_EVAL)
    checkpointer = D2AlignCheckpointer.from_config(det_cfg, detector, eval_only=True)
    checkpointer.load(args.detector_weights or det_cfg.MODEL.WEIGHTS)
    iou_net = build_model(iou_cfg)
    assert isinstance(iou_net, StandaloneIoUNet)
    checkpointer = D2AlignCheckpointer.from_config(iou_cfg, iou_net, eval_only=True)
    checkpointer.load(args.iounet_weights or iou_cfg.MODEL.WEIGHTS)
    return det_cfg, DetectorWithIoUNet(detector, iou_net).eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector-config", required=True)
    parser.add_argument("--detector-weights", default="", help="default: its MODEL.WEIGHTS")
    parser.add_argument("--iounet-config", required=True)
    parser.add_argument("--iounet-weights", default="", help="default: its MODEL.WEIGHTS")
    parser.add_argument("--out", default="output/standalone_iounet_eval")
    parser.add_argument("--detector-opts", nargs="*", default=[], help="KEY VALUE overrides")
    parser.add_argument("--iounet-opts", nargs="*", default=[], help="KEY VALUE overrides")
    args = parser.parse_args(argv)

    det_cfg, model = build_models(args)
    os.makedirs(args.out, exist_ok=True)
    results = Trainer.test(det_cfg, model)
    path = write_final_results(det_cfg, args.detector_config, results, float("nan"))
    with open(os.path.join(args.out, "standalone.json"), "w") as f:
        json.dump(vars(args), f, indent=2)
    print(json.dumps(results, indent=2))
    print(f"results written to {path}")
    return results


if __name__ == "__main__":
    main()
