"""Tests of the synthetic shapes generator (d2align.data.synthetic)."""

import dataclasses
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from d2align.data import CLASS_NAMES, ShapesSpec, generate_split, render_sample, split_is_current
from d2align.data.shapes_draw import occlude

# Small on purpose: 128 px images, a few of them. Seed 3 gives empty images in both splits.
SMALL = ShapesSpec(
    image_size=128, num_train=12, num_val=6, object_size=(8.0, 90.0), empty_fraction=0.2, seed=3
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The small spec's train split generated twice in-process and once with 2 processes."""
    roots = {}
    for key, workers in (("a", 1), ("b", 1), ("parallel", 2)):
        roots[key] = str(tmp_path_factory.mktemp(key))
        generate_split(SMALL, "train", roots[key], num_workers=workers, progress=False)
    return roots


def _read(root, split="train"):
    with open(os.path.join(root, "annotations", f"{split}.json"), "rb") as f:
        raw = f.read()
    return raw, json.loads(raw)


def _images(root, coco, split="train"):
    return [cv2.imread(os.path.join(root, split, im["file_name"])) for im in coco["images"]]


def test_deterministic_for_a_seed(generated):
    for other in ("b", "parallel"):
        raw_a, coco = _read(generated["a"])
        assert _read(generated[other])[0] == raw_a
        for img_a, img_b in zip(_images(generated["a"], coco), _images(generated[other], coco)):
            assert img_a is not None and np.array_equal(img_a, img_b)


def test_other_seed_or_split_differs():
    img, objects = render_sample(SMALL, "train", 0)
    img_seed, _ = render_sample(dataclasses.replace(SMALL, seed=4), "train", 0)
    img_split, _ = render_sample(SMALL, "val", 0)
    assert not np.array_equal(img, img_seed)
    assert not np.array_equal(img, img_split)


def test_boxes_tight_inside_image(generated):
    _, coco = _read(generated["a"])
    images = {im["id"]: im for im in coco["images"]}
    masks_per_image = {}
    assert coco["annotations"]
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        assert mask.shape == (im["height"], im["width"])
        ys, xs = np.nonzero(mask)
        tight = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert tight == [x, y, w, h]
        assert ann["area"] == mask.sum() >= SMALL.min_visible_pixels
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(CLASS_NAMES)
        masks_per_image.setdefault(ann["image_id"], []).append(mask)
    for masks in masks_per_image.values():  # visible parts of different objects never overlap
        assert np.sum(masks, axis=0).max() == 1


def test_pycocotools_loads(generated):
    _, coco = _read(generated["a"])
    api = COCO(os.path.join(generated["a"], "annotations", "train.json"))
    assert len(api.getAnnIds()) == len(coco["annotations"])
    assert api.getCatIds() == list(range(1, len(CLASS_NAMES) + 1))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == list(CLASS_NAMES)
    for im in coco["images"]:
        expected = sum(a["image_id"] == im["id"] for a in coco["annotations"])
        assert len(api.getAnnIds(imgIds=[im["id"]])) == expected
    counts = [len(api.getAnnIds(imgIds=[i])) for i in api.getImgIds()]
    assert 0 in counts and max(counts) > 0  # empty images exist, and images with objects


def test_fingerprint_tracks_spec(generated, tmp_path):
    assert split_is_current(SMALL, "train", generated["a"])
    assert not split_is_current(SMALL, "val", generated["a"])
    more_val, other_seed = (dataclasses.replace(SMALL, **{k: 99}) for k in ("num_val", "seed"))
    assert split_is_current(more_val, "train", generated["a"])
    assert not split_is_current(other_seed, "train", generated["a"])
    assert not [f for f in os.listdir(os.path.join(generated["a"], "annotations")) if ".tmp" in f]
    # a run interrupted after removing the old fingerprint leaves a split that is not current
    os.remove(os.path.join(generated["b"], "annotations", "train.fingerprint"))
    assert not split_is_current(SMALL, "train", generated["b"])


def test_default_spec_variety():
    """The default spec's first images cover the properties the dataset promises."""
    spec = ShapesSpec()
    areas, classes, aspects, borders, empty = [], set(), [], 0, 0
    for index in range(80):
        img, objects = render_sample(spec, "train", index)
        assert img.shape == (spec.image_size, spec.image_size, 3) and img.dtype == np.uint8
        empty += not objects
        for obj in objects:
            ys, xs = np.nonzero(obj["mask"])
            areas.append(obj["mask"].sum())
            classes.add(obj["category_id"])
            aspects.append((np.ptp(xs) + 1) / (np.ptp(ys) + 1))
            borders += xs.min() == 0 or ys.min() == 0 or max(xs.max(), ys.max()) == img.shape[0] - 1
    areas = np.array(areas)
    assert empty > 0
    assert classes == set(range(1, len(CLASS_NAMES) + 1))
    # COCO small / medium / large areas all occur
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any()
    assert (areas >= 96**2).any()
    assert min(aspects) < 1 / 2.5 and max(aspects) > 2.5
    assert borders > 0  # objects truncated at the image border


def test_occlude_hand_example():
    a = np.zeros((3, 4), dtype=bool)
    b, c = a.copy(), a.copy()
    a[0:2, 0:3] = True  # drawn first
    b[1:3, 1:4] = True
    c[0, 2:4] = True  # drawn last
    va, vb, vc = occlude([a, b, c])
    assert np.array_equal(va, np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool))
    assert np.array_equal(vb, np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1]], dtype=bool))
    assert np.array_equal(vc, c)


def test_rendered_pixels_follow_masks():
    """The drawing agrees with the annotation: objects are painted saturated, backgrounds are
    not, so every visible mask is more saturated on average than the pixels outside all masks."""
    for index in range(4):
        img, objects = render_sample(SMALL, "train", index)
        saturation = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 1].astype(float)
        outside = ~np.any([o["mask"] for o in objects] + [np.zeros(img.shape[:2], bool)], axis=0)
        for obj in objects:
            assert saturation[obj["mask"]].mean() > max(100.0, saturation[outside].mean())


def test_bad_spec_and_split():
    with pytest.raises(ValueError, match="objects_per_image"):
        ShapesSpec(objects_per_image=(3, 2))
    with pytest.raises(ValueError, match="image_format"):
        ShapesSpec(image_format="gif")
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        SMALL.num_images("test")
