#!/usr/bin/env python
"""Draw the annotations of a few samples of a dataset with detectron2's Visualizer.

    python tools/visualize_dataset.py --dataset d2align_shapes_train --num 8 --output shapes.png
    python tools/visualize_dataset.py --json my/train.json --image-root my/images --num 4
    python tools/visualize_dataset.py --num 6 --separate --output samples/  # one PNG each

Datasets: the embedded splits (`d2align_shapes_train`, `d2align_shapes_val`, generated on first
use), any dataset registered by detectron2 (e.g. `coco_2017_val` with DETECTRON2_DATASETS set),
or a COCO-format JSON with its image folder (`--json`, `--image-root`).
"""

import argparse
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from d2align.data import register_coco_instances_checked, register_shapes_datasets

_USER_DATASET = "d2align_visualize"


def draw_samples(dataset_name: str, num: int, seed: int, scale: float):
    """Annotated RGB images (H, W, 3) uint8 of `num` random samples of `dataset_name`."""
    dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dicts), size=min(num, len(dicts)), replace=False)
    images = []
    for index in sorted(chosen):
        record = dicts[index]
        rgb = utils.read_image(record["file_name"], format="RGB")
        drawn = Visualizer(rgb, metadata=metadata, scale=scale).draw_dataset_dict(record)
        images.append(drawn.get_image())
    return images


def tile(images, cols: int, pad: int = 4):
    """Grid (H, W, 3) uint8 of images (of any sizes), `cols` per row, on a white background."""
    cell_h = max(im.shape[0] for im in images) + pad
    cell_w = max(im.shape[1] for im in images) + pad
    rows = (len(images) + cols - 1) // cols
    grid = np.full((rows * cell_h + pad, cols * cell_w + pad, 3), 255, dtype=np.uint8)
    for k, im in enumerate(images):
        y, x = pad + (k // cols) * cell_h, pad + (k % cols) * cell_w
        grid[y : y + im.shape[0], x : x + im.shape[1]] = im
    return grid


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="d2align_shapes_train", help="registered name")
    parser.add_argument("--json", help="a COCO-format JSON to show instead of --dataset")
    parser.add_argument("--image-root", help="image folder of --json")
    parser.add_argument("--num", type=int, default=8, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample choice")
    parser.add_argument("--scale", type=float, default=2.0, help="image magnification")
    parser.add_argument("--cols", type=int, default=4, help="samples per row of the grid")
    parser.add_argument("--output", default="dataset_samples.png", help="PNG file, or folder")
    parser.add_argument("--separate", action="store_true", help="one PNG per sample in --output")
    args = parser.parse_args(argv)

    register_shapes_datasets()
    name = args.dataset
    if args.json:
        if not args.image_root:
            parser.error("--json needs --image-root")
        register_coco_instances_checked(_USER_DATASET, args.json, args.image_root)
        name = _USER_DATASET
    elif name not in DatasetCatalog.list():
        parser.error(f"unknown dataset '{name}'; registered: {', '.join(DatasetCatalog.list())}")

    images = draw_samples(name, args.num, args.seed, args.scale)
    if args.separate:
        os.makedirs(args.output, exist_ok=True)
        paths = [os.path.join(args.output, f"{name}_{k:02d}.png") for k in range(len(images))]
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        images, paths = [tile(images, min(args.cols, len(images)))], [args.output]
    for image, path in zip(images, paths):
        Image.fromarray(image).save(path)  # RGB, as detectron2's Visualizer draws
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
