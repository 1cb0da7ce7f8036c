"""The embedded default dataset: synthetic images of irregular shapes, in COCO format.

Each image has a textured, cluttered background and 0 or more objects of the classes in
`CLASS_NAMES`, with random rotation, aspect ratio and size, occluding one another and truncated
at the image borders. Everything is deterministic: image `index` of split `split` is drawn from a
generator seeded by `(spec.seed, split, index)`, so the output does not depend on how many worker
processes draw it.

Annotation rules:
    * objects are drawn in sequence, a later object hides the earlier ones; an object's mask is
      its *visible* pixels (its own pixels minus those of later objects, inside the image);
    * `bbox` is the tight XYWH box of the visible pixels in absolute pixel units (pixel (x, y)
      covers [x, x + 1) x [y, y + 1)), `area` is the visible pixel count, `segmentation` the
      visible mask as compressed COCO RLE, `iscrowd` is 0;
    * every drawn object is annotated: a candidate object that would leave itself or an earlier
      object with fewer than `min_visible_pixels` visible pixels or less than
      `min_visible_fraction` of its whole area visible is redrawn (new class, size,
      place; up to `_MAX_TRIES` times) and otherwise left out of the image entirely;
    * a fraction `empty_fraction` of the images have no object (only background and clutter).

Layout written by `generate_split(spec, split, root)`:
    <root>/<split>/000000.jpg ...            the images
    <root>/annotations/<split>.json           COCO instances JSON
    <root>/annotations/<split>.fingerprint    hash of the spec that produced the split
"""

import dataclasses
import hashlib
import json
import multiprocessing
import os
import zlib
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from ..system import usable_cpus
from .shapes_draw import (
    CLASS_NAMES,
    draw_distractors,
    object_mask,
    occlude,
    occlusion_ok,
    paint_object,
    render_background,
)

__all__ = ["CLASS_NAMES", "ShapesSpec", "render_sample", "generate_split", "split_is_current"]

GENERATOR_VERSION = 1  # bump when the drawing code changes the output for a given spec
SPLITS = ("train", "val")
_MAX_TRIES = 10
_JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
    """Knobs of the synthetic shapes dataset.

    Attributes:
        image_size: side of the square images, in pixels.
        num_train, num_val: number of images of the "train" and "val" splits.
        objects_per_image: inclusive range of objects attempted in a non-empty image.
        object_size: range of sqrt(w * h) of an object's unrotated extent, in pixels; sampled
            log-uniformly so that COCO's small (< 32^2), medium and large (> 96^2) areas occur.
        aspect_ratio: range of w / h of an object's unrotated extent, sampled log-uniformly.
        distractors_per_image: inclusive range of clutter items (lines, scribbles, blobs).
        empty_fraction: probability that an image has no object at all.
        min_visible_pixels, min_visible_fraction: visibility an object must keep (see module).
        image_format: "jpg" or "png".
        seed: base seed of the whole dataset.
    """

    image_size: int = 256
    num_train: int = 2000
    num_val: int = 300
    objects_per_image: Tuple[int, int] = (2, 6)
    object_size: Tuple[float, float] = (24.0, 240.0)
    aspect_ratio: Tuple[float, float] = (0.25, 4.0)
    distractors_per_image: Tuple[int, int] = (3, 10)
    empty_fraction: float = 0.05
    min_visible_pixels: int = 20
    min_visible_fraction: float = 0.35
    image_format: str = "jpg"
    seed: int = 0

    def __post_init__(self):
        def check(ok, what):
            if not ok:
                raise ValueError(f"ShapesSpec: invalid {what} in {self}")

        check(self.image_size >= 32, "image_size (must be >= 32)")
        check(self.num_train >= 0 and self.num_val >= 0, "num_train/num_val (must be >= 0)")
        lo, hi = self.objects_per_image
        check(1 <= lo <= hi, "objects_per_image (need 1 <= min <= max)")
        check(0 < self.object_size[0] <= self.object_size[1], "object_size (need 0 < min <= max)")
        check(0 < self.aspect_ratio[0] <= self.aspect_ratio[1], "aspect_ratio")
        check(0 <= self.distractors_per_image[0] <= self.distractors_per_image[1], "distractors")
        check(0.0 <= self.empty_fraction <= 1.0, "empty_fraction (must be in [0, 1])")
        check(self.min_visible_pixels >= 1, "min_visible_pixels (must be >= 1)")
        check(0.0 <= self.min_visible_fraction <= 1.0, "min_visible_fraction")
        check(self.image_format in ("jpg", "png"), "image_format (must be 'jpg' or 'png')")

    def num_images(self, split: str) -> int:
        """Number of images of `split` ("train" or "val")."""
        if split not in SPLITS:
            raise ValueError(f"Unknown split '{split}' of the shapes dataset; expected {SPLITS}")
        return self.num_train if split == "train" else self.num_val


def _rng(spec: ShapesSpec, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, zlib.crc32(split.encode()), index])


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def render_sample(spec: ShapesSpec, split: str, index: int) -> Tuple[np.ndarray, List[Dict]]:
    """Draw image `index` of `split`.

    Returns:
        image (H, W, 3) uint8 BGR, with H = W = spec.image_size.
        objects: one dict per annotated object, in drawing order, with "category_id" (1-based
        index into `CLASS_NAMES`) and "mask" ((H, W) bool, the visible pixels; non-empty and
        pairwise disjoint).
    """
    rng = _rng(spec, split, index)
    size = spec.image_size
    img = render_background(rng, size, size)
    lo, hi = spec.distractors_per_image
    draw_distractors(img, rng, int(rng.integers(lo, hi + 1)))
    if rng.random() < spec.empty_fraction:
        return img, []

    def visible_enough(visible, full_area):
        area = int(visible.sum())
        return occlusion_ok(area, full_area, spec.min_visible_pixels, spec.min_visible_fraction)

    placed = []  # (class_idx, in-image mask, full area), in drawing order
    lo, hi = spec.objects_per_image
    for _ in range(int(rng.integers(lo, hi + 1))):
        for _ in range(_MAX_TRIES):
            class_idx = int(rng.integers(len(CLASS_NAMES)))
            scale = _log_uniform(rng, *spec.object_size)
            aspect = _log_uniform(rng, *spec.aspect_ratio)
            extent = (scale * np.sqrt(aspect), scale / np.sqrt(aspect))
            center = tuple(rng.uniform(0.0, size, size=2))
            angle = rng.uniform(0.0, 2.0 * np.pi)
            mask, full_area = object_mask(class_idx, center, extent, angle, (size, size), rng)
            candidate = placed + [(class_idx, mask, full_area)]
            visible = occlude([m for _, m, _ in candidate])
            if all(visible_enough(v, a) for v, (_, _, a) in zip(visible, candidate)):
                placed = candidate
                break
    for class_idx, mask, _ in placed:
        paint_object(img, mask, class_idx, rng)
    visible = occlude([m for _, m, _ in placed])
    return img, [{"category_id": c + 1, "mask": v} for (c, _, _), v in zip(placed, visible)]


def _mask_annotation(mask: np.ndarray) -> Dict:
    """COCO fields of a visible mask (H, W) bool: tight XYWH bbox, pixel area, compressed RLE."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)],
        "area": int(mask.sum()),
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "iscrowd": 0,
    }


def _file_name(spec: ShapesSpec, index: int) -> str:
    return f"{index:06d}.{spec.image_format}"


def _render_and_save(job: Tuple[ShapesSpec, str, int, str]) -> List[Dict]:
    """Worker: draw one image, write it to `image_dir`, return its annotations (without ids)."""
    spec, split, index, image_dir = job
    img, objects = render_sample(spec, split, index)
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if spec.image_format == "jpg" else []
    path = os.path.join(image_dir, _file_name(spec, index))
    if not cv2.imwrite(path, img, params):
        raise OSError(f"Could not write image {path}")
    return [dict(category_id=o["category_id"], **_mask_annotation(o["mask"])) for o in objects]


def _init_worker():
    cv2.setNumThreads(1)


def split_fingerprint(spec: ShapesSpec, split: str) -> str:
    """Hash of everything that determines the content of `split` (not the other split's size)."""
    fields = dataclasses.asdict(spec)
    fields.pop("num_val" if split == "train" else "num_train")
    key = json.dumps({"version": GENERATOR_VERSION, "split": split, "spec": fields}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _paths(root: str, split: str) -> Tuple[str, str, str]:
    ann_dir = os.path.join(root, "annotations")
    return (
        os.path.join(root, split),
        os.path.join(ann_dir, f"{split}.json"),
        os.path.join(ann_dir, f"{split}.fingerprint"),
    )


def split_is_current(spec: ShapesSpec, split: str, root: str) -> bool:
    """Whether `root` holds a complete copy of `split` generated from `spec`."""
    _, json_file, stamp = _paths(root, split)
    if not (os.path.isfile(json_file) and os.path.isfile(stamp)):
        return False
    with open(stamp) as f:
        return f.read().strip() == split_fingerprint(spec, split)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def generate_split(
    spec: ShapesSpec,
    split: str,
    out_dir: str,
    num_workers: Optional[int] = None,
    progress: bool = True,
) -> str:
    """Generate `split` of the dataset described by `spec` under `out_dir` (see module docstring).

    The JSON and the fingerprint are written last, each atomically (temporary file, then
    rename), and the old fingerprint is removed first: an interrupted run never leaves a split
    that `split_is_current` accepts.

    Args:
        num_workers: processes drawing images (default: min(2, CPU count)); the output is the
            same for any value.
        progress: show a tqdm progress bar (on stderr).

    Returns:
        The path of the COCO JSON file. Its image file names are relative to `<out_dir>/<split>`.
    """
    count = spec.num_images(split)
    image_dir, json_file, stamp = _paths(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    if os.path.exists(stamp):
        os.remove(stamp)
    if num_workers is None:
        num_workers = min(2, usable_cpus())
    jobs = [(spec, split, i, image_dir) for i in range(count)]
    bar = dict(total=count, desc=f"d2align shapes/{split}", unit="img", disable=not progress)
    if num_workers > 1 and count > 1:
        ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ctx.Pool(num_workers, initializer=_init_worker) as pool:
            per_image = list(tqdm(pool.imap(_render_and_save, jobs, chunksize=8), **bar))
    else:
        per_image = [_render_and_save(job) for job in tqdm(jobs, **bar)]

    images, annotations = [], []
    for index, anns in enumerate(per_image):
        image_id = index + 1
        size = spec.image_size
        file_name = _file_name(spec, index)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for ann in anns:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, **ann))
    coco = {
        "info": {
            "description": "d2align synthetic shapes",
            "version": f"{GENERATOR_VERSION}-{split_fingerprint(spec, split)}",
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(CLASS_NAMES)
        ],
    }
    _write_atomic(json_file, json.dumps(coco, separators=(",", ":")))
    _write_atomic(stamp, split_fingerprint(spec, split) + "\n")
    return json_file
