"""Tests of dataset registration and the checked COCO loader (d2align.data.datasets)."""

import copy
import dataclasses
import json
import os
import re

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from d2align.data import (
    CLASS_NAMES,
    SHAPES_DATASETS,
    ShapesSpec,
    default_shapes_root,
    load_coco_json_checked,
    register_coco_instances_checked,
    register_shapes_datasets,
)

SMALL = ShapesSpec(image_size=96, num_train=8, num_val=4, empty_fraction=0.3, seed=1)
USER = "d2align_test_user_dataset"


@pytest.fixture
def clean_catalog():
    """Remove the registrations a test makes, so that other tests see the catalog unchanged."""
    yield
    for name in list(SHAPES_DATASETS.values()) + [USER]:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_shapes_register_and_load(tmp_path, clean_catalog):
    root = str(tmp_path / "shapes")
    assert register_shapes_datasets(root, SMALL, num_workers=1) == SHAPES_DATASETS
    assert not os.path.exists(root)  # registering is cheap: generation waits for the first load
    for split, name in SHAPES_DATASETS.items():
        dicts = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        assert len(dicts) == SMALL.num_images(split)
        assert meta.thing_classes == list(CLASS_NAMES) and meta.evaluator_type == "coco"
        assert os.path.isfile(meta.json_file) and meta.image_root == os.path.join(root, split)
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and (d["height"], d["width"]) == (96, 96)
            for ann in d["annotations"]:
                assert ann["bbox_mode"] == BoxMode.XYWH_ABS
                assert 0 <= ann["category_id"] < len(CLASS_NAMES)  # contiguous ids
    assert any(not d["annotations"] for d in DatasetCatalog.get(SHAPES_DATASETS["train"]))


def test_shapes_registration_idempotent_and_regenerates(tmp_path, clean_catalog):
    root = str(tmp_path / "shapes")
    register_shapes_datasets(root, SMALL, num_workers=1)
    first = DatasetCatalog.get(SHAPES_DATASETS["val"])
    json_file = MetadataCatalog.get(SHAPES_DATASETS["val"]).json_file
    mtime = os.stat(json_file).st_mtime_ns
    register_shapes_datasets(root, SMALL, num_workers=1)  # same args: nothing changes
    assert DatasetCatalog.get(SHAPES_DATASETS["val"]) == first
    assert os.stat(json_file).st_mtime_ns == mtime
    other = dataclasses.replace(SMALL, seed=2)
    register_shapes_datasets(root, other, num_workers=1)  # another spec: regenerated on load
    assert DatasetCatalog.get(SHAPES_DATASETS["val"]) != first
    assert MetadataCatalog.get(SHAPES_DATASETS["val"]).shapes_spec["seed"] == 2


def test_empty_image_goes_through_mapper(tmp_path, clean_catalog):
    register_shapes_datasets(str(tmp_path), SMALL, num_workers=1)
    empty = [d for d in DatasetCatalog.get(SHAPES_DATASETS["train"]) if not d["annotations"]]
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    out = mapper(empty[0])
    assert tuple(out["image"].shape) == (3, 96, 96) and len(out["instances"]) == 0


def test_default_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("D2ALIGN_DATASETS", str(tmp_path))
    assert default_shapes_root() == os.path.join(str(tmp_path), "shapes")


def _user_dataset(tmp_path):
    """A small valid COCO file with non-contiguous category ids and an image with no object."""
    image_root = tmp_path / "images"
    image_root.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(image_root / name)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 40, "width": 50},
            {"id": 2, "file_name": "b.png", "height": 40, "width": 50},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 7,
                "bbox": [1, 2, 10, 5],
                "area": 50,
                "iscrowd": 0,
                "segmentation": [[1, 2, 11, 2, 11, 7, 1, 7]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "bbox": [20.5, 3, 4, 8.5],
                "area": 34,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 7, "name": "kite"}, {"id": 3, "name": "bolt"}],
    }
    return coco, str(image_root)


def _write(tmp_path, coco, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return str(path)


def test_user_dataset_registers(tmp_path, clean_catalog):
    coco, image_root = _user_dataset(tmp_path)
    json_file = _write(tmp_path, coco)
    register_coco_instances_checked(USER, json_file, image_root)
    register_coco_instances_checked(USER, json_file, image_root)  # idempotent
    meta = MetadataCatalog.get(USER)
    assert meta.thing_classes == ["bolt", "kite"]  # sorted by category id
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert meta.json_file == json_file and meta.evaluator_type == "coco"
    dicts = DatasetCatalog.get(USER)
    assert [len(d["annotations"]) for d in dicts] == [2, 0]
    assert sorted(a["category_id"] for a in dicts[0]["annotations"]) == [0, 1]
    assert dicts[0]["file_name"] == os.path.join(image_root, "a.png")


def _break(coco, what):
    coco = copy.deepcopy(coco)
    ann = coco["annotations"][1]
    if what == "missing key":
        del ann["bbox"]
    elif what == "zero width":
        ann["bbox"][2] = 0
    elif what == "negative height":
        ann["bbox"][3] = -1
    elif what == "unknown category":
        ann["category_id"] = 99
    elif what == "unknown image":
        ann["image_id"] = 5
    elif what == "nan box":
        ann["bbox"][0] = float("nan")
    elif what == "duplicate id":
        ann["id"] = 10
    elif what == "box outside":
        ann["bbox"][0] = 60
    return coco


@pytest.mark.parametrize(
    "what,message",
    [
        ("missing key", r"annotations\[1\] \(id=11, image_id=1\): missing key\(s\) \['bbox'\]"),
        ("zero width", r"annotations\[1\] \(id=11, image_id=1\): bbox .* non-positive width"),
        ("negative height", r"annotations\[1\] \(id=11, .*non-positive height"),
        ("unknown category", r"annotations\[1\] \(id=11, .*category_id 99 is not declared"),
        ("unknown image", r"annotations\[1\] \(id=11, image_id=5\): image_id 5 is not the id"),
        ("nan box", r"annotations\[1\] .*not a list of 4 finite numbers"),
        ("duplicate id", r"annotations\[1\] \(id=10, image_id=1\): duplicate id"),
        ("box outside", r"annotations\[1\] .*lies outside its image"),
    ],
)
def test_bad_annotation_named(tmp_path, clean_catalog, what, message):
    coco, image_root = _user_dataset(tmp_path)
    json_file = _write(tmp_path, _break(coco, what), "bad.json")
    pattern = f"^{re.escape(json_file)}: {message}"
    with pytest.raises(ValueError, match=pattern):
        register_coco_instances_checked(USER, json_file, image_root)
    assert USER not in DatasetCatalog.list()
    with pytest.raises(ValueError, match=pattern):
        load_coco_json_checked(json_file, image_root)


def test_bad_file_level_errors(tmp_path):
    coco, image_root = _user_dataset(tmp_path)
    no_cats = {k: v for k, v in coco.items() if k != "categories"}
    with pytest.raises(ValueError, match=r"bad\.json: top level: missing list 'categories'"):
        load_coco_json_checked(_write(tmp_path, no_cats, "bad.json"), image_root)
    (tmp_path / "trunc.json").write_text(json.dumps(coco)[:-20])
    with pytest.raises(ValueError, match=r"trunc\.json: cannot read a COCO JSON file"):
        load_coco_json_checked(str(tmp_path / "trunc.json"), image_root)
    os.remove(os.path.join(image_root, "b.png"))
    with pytest.raises(ValueError, match=r"images\[1\] \(id=2, file_name='b.png'\): image file"):
        load_coco_json_checked(_write(tmp_path, coco), image_root)


@pytest.mark.parametrize("how", ["no annotation", "all crowd"])
def test_a_training_set_with_nothing_to_learn_is_refused(tmp_path, clean_catalog, how):
    from d2align.data.datasets import check_something_to_learn

    coco, image_root = _user_dataset(tmp_path)
    if how == "no annotation":
        coco["annotations"] = []
    else:
        for ann in coco["annotations"]:
            ann["iscrowd"] = 1
    json_file = _write(tmp_path, coco)
    register_coco_instances_checked(USER, json_file, image_root)
    assert MetadataCatalog.get(USER).num_instances == 0
    with pytest.raises(ValueError, match=re.escape(f"'{USER}' ({json_file}) has no annotation")):
        check_something_to_learn([USER])


def test_train_and_test_classes_are_compared(tmp_path, clean_catalog):
    """A test JSON whose class names differ from the training JSON's (here reversed) is
    refused naming both files; a custom training set without a test set is refused naming the
    keys, instead of being evaluated on the embedded 6-class validation set."""
    from d2align.data.from_config import CUSTOM_TEST, CUSTOM_TRAIN, register_data_from_config
    from d2align.engine import build_config as build
    from d2align.testing import ROOT

    def build_config(_, opts):  # the shapes Faster R-CNN config: DATASETS.TEST the embedded val
        return build(f"{ROOT}/configs/shapes/faster_rcnn_R18_FPN_scratch.yaml", opts)

    coco, image_root = _user_dataset(tmp_path)
    train_json = _write(tmp_path, coco, "train.json")
    reversed_coco = copy.deepcopy(coco)
    names = [c["name"] for c in reversed_coco["categories"]]
    for c, name in zip(reversed_coco["categories"], reversed(names)):
        c["name"] = name
    test_json = _write(tmp_path, reversed_coco, "test.json")
    keys = ["D2ALIGN.DATA.TRAIN_JSON", train_json, "D2ALIGN.DATA.TRAIN_IMAGES", image_root]
    test_keys = ["D2ALIGN.DATA.TEST_JSON", test_json, "D2ALIGN.DATA.TEST_IMAGES", image_root]
    try:
        with pytest.raises(ValueError, match=f"{CUSTOM_TEST}' \\({re.escape(test_json)}\\).*"
                           f"{CUSTOM_TRAIN}' \\({re.escape(train_json)}\\)"):  # fmt: skip
            register_data_from_config(build_config("", keys + test_keys))
        with pytest.raises(ValueError, match="TRAIN_JSON is set but D2ALIGN.DATA.TEST_JSON is not"):
            register_data_from_config(build_config("", keys))
        same = keys + ["D2ALIGN.DATA.TEST_JSON", train_json, "D2ALIGN.DATA.TEST_IMAGES", image_root]
        register_data_from_config(build_config("", same))  # the same classes: accepted
        register_data_from_config(build_config("", keys + ["DATASETS.TEST", "()"]))
    finally:
        for name in (CUSTOM_TRAIN, CUSTOM_TEST):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
