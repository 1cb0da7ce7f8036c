#!/usr/bin/env python
"""(Re)generate the embedded synthetic shapes dataset, with a progress bar.

    python tools/generate_dataset.py                  # both splits, if missing or stale
    python tools/generate_dataset.py --force          # regenerate even if current
    python tools/generate_dataset.py --root DIR       # another folder than the cache

The default folder is `$D2ALIGN_DATASETS/shapes` (D2ALIGN_DATASETS defaults to
`~/.cache/d2align/datasets`); training commands generate it on first use anyway.
"""

import argparse
import json
import time

from d2align.data import ShapesSpec, default_shapes_root, ensure_shapes_split


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help=f"dataset folder (default: {default_shapes_root()})")
    parser.add_argument("--split", choices=("train", "val", "all"), default="all")
    parser.add_argument("--force", action="store_true", help="regenerate even if current")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: 2)")
    args = parser.parse_args(argv)

    spec = ShapesSpec()
    for split in ("train", "val") if args.split == "all" else (args.split,):
        start = time.perf_counter()
        json_file, image_root = ensure_shapes_split(
            split, args.root, spec, num_workers=args.workers, force=args.force
        )
        with open(json_file) as f:
            coco = json.load(f)
        empty = len(coco["images"]) - len({a["image_id"] for a in coco["annotations"]})
        print(
            f"{split}: {len(coco['images'])} images ({empty} without objects), "
            f"{len(coco['annotations'])} objects in {image_root}, annotations {json_file} "
            f"[{time.perf_counter() - start:.1f} s]"
        )


if __name__ == "__main__":
    main()
