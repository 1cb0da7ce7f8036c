#!/usr/bin/env python
"""Fig. 4: draw the label assignment of the static rule against the guided rules.

For the first --num-images images of the config's first training set, runs the model (load a
trained one with MODEL.WEIGHTS) and writes `<output>/<image id>.png`: two panels, static vs
Localize to Classify and static vs Classify to Localize. Red anchors are positive for the static
rule only, green ones for Localize to Classify only, yellow ones for Classify to Localize only;
ground truths are white.

    python projects/MutualGuidance/visualize_assignments.py \
        --config-file projects/MutualGuidance/configs/shapes/mutual_guidance_R18_FPN_scratch.yaml \
        --output output/shapes/mutual_guidance/fig4 --num-images 4 \
        MODEL.WEIGHTS output/shapes/mutual_guidance/mutual_guidance_R18_FPN_scratch/model_final.pth
"""

import argparse
import os

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.modeling import build_model

from d2align.checkpoint import D2AlignCheckpointer
from d2align.engine import load_config
from d2align.projects.mutual_guidance import add_mutual_guidance_config
from d2align.projects.mutual_guidance.visualize import draw_difference, positive_anchors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="folder of the PNG files")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--scale", type=float, default=2.0, help="enlarge the drawings")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)

    cfg = load_config(args.config_file, args.opts, [add_mutual_guidance_config])
    model = build_model(cfg).eval()
    D2AlignCheckpointer.from_config(cfg, model, eval_only=True).load(cfg.MODEL.WEIGHTS)
    mapper = DatasetMapper(
        is_train=True,  # keeps the annotations
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )
    dicts = [d for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0]) if d["annotations"]]
    os.makedirs(args.output, exist_ok=True)
    for record in dicts[: args.num_images]:
        inputs = mapper(record)
        anchors, masks = positive_anchors(model, inputs)
        image = inputs["image"].permute(1, 2, 0).numpy()
        image = convert_image_to_rgb(image, cfg.INPUT.FORMAT)[:, :, ::-1]  # BGR for OpenCV
        gt_boxes = inputs["instances"].gt_boxes.tensor
        panels = [
            draw_difference(
                image, gt_boxes, anchors, masks["static"], masks[rule], rule, scale=args.scale
            )
            for rule in ("localize_to_classify", "classify_to_localize")
        ]
        path = os.path.join(args.output, f"{record['image_id']}.png")
        cv2.imwrite(path, np.concatenate(panels, axis=1))
        counts = {rule: int(mask.sum()) for rule, mask in masks.items()}
        print(f"{path}: positives {counts}")


if __name__ == "__main__":
    main()
