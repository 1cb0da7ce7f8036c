"""Checked loading and registration of COCO-format datasets, and of the embedded shapes dataset.

`load_coco_json_checked` validates a COCO instances JSON before handing it to detectron2's
`load_coco_json`, so that a malformed or inconsistent file fails with a message naming the file
and the record, e.g.::

    data/train.json: annotations[12] (id=57, image_id=3): bbox [1, 2, 0, 5] has non-positive width

instead of an assertion deep inside a data loader worker. Image files are checked too (see
`image_check.image_file_problem`: empty, not an image, truncated, or of another size than the
JSON says), e.g.::

    data/train.json: images[3] (id=4, file_name='b.jpg'): image file data/img/b.jpg is truncated
    (a JPEG file without its end marker)

Boxes are COCO XYWH in absolute
pixels. `register_coco_instances_checked` makes any such JSON with its image folder usable by
name, and `register_shapes_datasets` registers the embedded splits ("d2align_shapes_train",
"d2align_shapes_val"), which are generated when first loaded.
"""

import dataclasses
import functools
import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from iopath.common.file_io import file_lock

from .image_check import image_file_problem
from .synthetic import CLASS_NAMES, SPLITS, ShapesSpec, generate_split, split_is_current

__all__ = [
    "SHAPES_DATASETS",
    "check_dataset_classes",
    "check_something_to_learn",
    "default_shapes_root",
    "ensure_shapes_split",
    "validate_coco_dict",
    "load_coco_json_checked",
    "register_coco_instances_checked",
    "register_shapes_datasets",
]

logger = logging.getLogger(__name__)

# Stable dataset names of the embedded splits.
SHAPES_DATASETS = {split: f"d2align_shapes_{split}" for split in SPLITS}

_REQUIRED = {
    "images": ("id", "file_name", "height", "width"),
    # area and iscrowd are read by COCO evaluation (pycocotools COCOeval)
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd"),
    "categories": ("id", "name"),
}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _where(section: str, index: int, record) -> str:
    """Name of a record, e.g. "annotations[12] (id=57, image_id=3)"."""
    keys = {"images": ("id", "file_name"), "annotations": ("id", "image_id")}.get(section, ("id",))
    tags = [f"{k}={record[k]!r}" for k in keys if isinstance(record, dict) and k in record]
    return f"{section}[{index}]" + (f" ({', '.join(tags)})" if tags else "")


def _check_segmentation(segm, height: int, width: int) -> Optional[str]:
    """Problem with an annotation's "segmentation" (polygons or RLE), or None if it is valid."""
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            return "RLE segmentation needs keys 'counts' and 'size'"
        if list(segm["size"]) != [height, width]:
            return f"RLE size {segm['size']} differs from the image size [{height}, {width}]"
        return None
    if not isinstance(segm, list) or not segm:
        return "segmentation must be a non-empty list of polygons or an RLE dict"
    for poly in segm:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            return "a polygon must be a list of an even number (>= 6) of coordinates"
        if not all(_is_number(v) for v in poly):
            return "a polygon has a coordinate that is not a finite number"
    return None


def _check_annotation(ann: Dict, image: Optional[Dict], category_ids) -> Optional[str]:
    """Problem with one annotation (whose required keys exist), or None if it is valid."""
    if image is None:
        return f"image_id {ann['image_id']!r} is not the id of any entry of 'images'"
    if ann["category_id"] not in category_ids:
        shown = sorted(category_ids)[:20]
        return f"category_id {ann['category_id']!r} is not declared in 'categories' ({shown})"
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        return f"bbox {box!r} is not a list of 4 finite numbers [x, y, w, h]"
    x, y, w, h = box
    if w <= 0:
        return f"bbox {box} has non-positive width"
    if h <= 0:
        return f"bbox {box} has non-positive height"
    if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
        return f"bbox {box} lies outside its image of size {image['width']}x{image['height']}"
    if not (_is_number(ann["area"]) and ann["area"] >= 0):
        return f"area {ann['area']!r} is not a non-negative number"
    if ann["iscrowd"] not in (0, 1):
        return f"iscrowd {ann['iscrowd']!r} is not 0 or 1"
    if "segmentation" in ann:
        return _check_segmentation(ann["segmentation"], image["height"], image["width"])
    return None


def validate_coco_dict(
    data, json_file: str, image_root: Optional[str] = None, check_images: bool = True
) -> None:
    """Check a parsed COCO instances JSON; raise ValueError naming `json_file` and the record.

    Checks: the three lists and their required keys; unique ids; images with positive integer
    sizes (and, if `image_root` is given, an existing file, which with `check_images` must be
    a complete image of that size: `image_file_problem`); each annotation's image id and
    category id declared; bbox of 4 finite numbers with w > 0 and h > 0, touching its image;
    area >= 0; iscrowd in {0, 1}; segmentation, if any, as valid polygons or RLE of the image
    size. Images without annotations are valid.
    """

    def fail(where: str, problem: str):
        raise ValueError(f"{json_file}: {where}: {problem}")

    if not isinstance(data, dict):
        fail("top level", "expected a JSON object with 'images', 'annotations', 'categories'")
    for section, required in _REQUIRED.items():
        if not isinstance(data.get(section), list):
            fail("top level", f"missing list '{section}'")
        seen = {}
        for i, record in enumerate(data[section]):
            missing = [k for k in required if not isinstance(record, dict) or k not in record]
            if missing:
                fail(_where(section, i, record), f"missing key(s) {missing}")
            if not _is_int(record["id"]):
                fail(_where(section, i, record), "id is not an integer")
            if record["id"] in seen:
                first = f"{section}[{seen[record['id']]}]"
                fail(_where(section, i, record), f"duplicate id (also used by {first})")
            seen[record["id"]] = i
    if not data["categories"]:
        fail("categories", "no category is declared")

    images = {}
    for i, img in enumerate(data["images"]):
        if not all(_is_int(img[k]) and img[k] > 0 for k in ("height", "width")):
            fail(_where("images", i, img), "height and width must be positive integers")
        if image_root is not None:
            path = os.path.join(image_root, str(img["file_name"]))
            if check_images:
                problem = image_file_problem(path, img["width"], img["height"])
            else:
                problem = None if os.path.isfile(path) else "not found"
            if problem:
                fail(_where("images", i, img), f"image file {path} {problem}")
        images[img["id"]] = img
    category_ids = {c["id"] for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        problem = _check_annotation(ann, images.get(ann["image_id"]), category_ids)
        if problem:
            fail(_where("annotations", i, ann), problem)


def _read_checked(json_file: str, image_root: Optional[str], check_images: bool = True) -> Dict:
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise ValueError(f"{json_file}: cannot read a COCO JSON file: {type(e).__name__}: {e}")
    validate_coco_dict(data, json_file, image_root, check_images)
    return data


def load_coco_json_checked(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, check_images: bool = True
) -> List[Dict]:
    """Validate `json_file` (see `validate_coco_dict`, image files included unless
    `check_images` is False: then only their existence), then load it with detectron2's
    `load_coco_json` into detectron2's dataset-dict format (boxes XYWH_ABS; category ids mapped
    to contiguous [0, K) when `dataset_name` is given, as detectron2 does)."""
    _read_checked(json_file, image_root, check_images)
    return load_coco_json(json_file, image_root, dataset_name)


def _register(name: str, loader, metadata: Dict) -> None:
    """Register `name`; a no-op if it is registered with the same metadata, else replaces it."""
    if name in DatasetCatalog.list():
        old = MetadataCatalog.get(name)
        if all(old.get(k) == v for k, v in metadata.items()):
            return
        logger.info(f"Replacing the registration of dataset '{name}'")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_coco_instances_checked(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO instances JSON and its image folder as dataset `name`.

    The file is validated now (errors name the file and the record), so a broken dataset fails
    at registration rather than in training, and again when loaded. Metadata: `thing_classes`
    (category names sorted by id), `thing_dataset_id_to_contiguous_id`, `json_file`,
    `image_root`, `evaluator_type="coco"`, `num_instances` (annotations that are not crowd
    regions: what a training can learn from). Calling it again with the same files is a no-op;
    with other files, it replaces the registration of `name`.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    data = _read_checked(json_file, image_root)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    _register(
        name,
        lambda: load_coco_json_checked(json_file, image_root, name),
        dict(
            thing_classes=[c["name"] for c in categories],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            num_instances=sum(1 for a in data["annotations"] if not a["iscrowd"]),
        ),
    )


def check_dataset_classes(train: Sequence[str], test: Sequence[str]) -> None:
    """Refuse a test set whose classes differ from the training set's (names and order, as
    `thing_classes` of the registered datasets; datasets without that metadata are skipped):
    the evaluation would score each class against another's ground truth.

    Raises:
        ValueError: naming both datasets (and their JSON files) and both class lists.
    """
    registered = [n for n in list(train) + list(test) if n in DatasetCatalog.list()]
    with_classes = [n for n in registered if MetadataCatalog.get(n).get("thing_classes")]
    if not with_classes:
        return
    first = with_classes[0]
    for name in with_classes[1:]:
        a, b = (MetadataCatalog.get(n).get("thing_classes") for n in (first, name))
        if list(a) != list(b):
            raise ValueError(
                f"dataset '{name}' ({_source(name)}) has the classes {list(b)}, but '{first}' "
                f"({_source(first)}) has {list(a)}: a model trained on one cannot be evaluated "
                "on the other; use the same categories (names and ids) in both JSON files"
            )


def check_something_to_learn(train: Sequence[str]) -> None:
    """Refuse training sets with no annotation to learn from (none at all, or only crowd
    regions), naming the dataset and its JSON file."""
    for name in train:
        if name not in DatasetCatalog.list():
            continue
        count = MetadataCatalog.get(name).get("num_instances", None)
        if count == 0:
            raise ValueError(
                f"training set '{name}' ({_source(name)}) has no annotation to learn from: no "
                "object that is not a crowd region (iscrowd 1); a detector trained on it would "
                "learn only background"
            )


def _source(name: str) -> str:
    return MetadataCatalog.get(name).get("json_file", "no JSON file")


def default_shapes_root() -> str:
    """Folder of the embedded dataset: `$D2ALIGN_DATASETS/shapes`, where D2ALIGN_DATASETS
    defaults to `~/.cache/d2align/datasets`."""
    base = os.environ.get("D2ALIGN_DATASETS", os.path.join("~", ".cache", "d2align", "datasets"))
    return os.path.join(os.path.expanduser(base), "shapes")


def ensure_shapes_split(
    split: str,
    root: Optional[str] = None,
    spec: Optional[ShapesSpec] = None,
    num_workers: Optional[int] = None,
    force: bool = False,
) -> Tuple[str, str]:
    """Make sure `root` holds `split` generated from `spec`; generate it if not (or if `force`).

    A split is regenerated when it is missing, incomplete, was made from another spec or
    generator version, or has an image file that is missing or corrupted (empty, truncated, not
    an image, another size: `image_file_problem`; a warning names it). Generation holds a file
    lock in `root`, so concurrent callers (several processes of one job) generate once. When
    the split is current this reads its JSON and the header and end of each image.

    Args:
        split: "train" or "val".
        root: dataset folder (default: `default_shapes_root()`).
        spec: dataset knobs (default: `ShapesSpec()`).
        num_workers: processes used if generation is needed (see `generate_split`).
        force: regenerate even if the split is current.

    Returns:
        (json_file, image_root) of the split.
    """
    root = os.path.abspath(root or default_shapes_root())
    spec = spec or ShapesSpec()
    spec.num_images(split)  # rejects an unknown split
    json_file = os.path.join(root, "annotations", f"{split}.json")
    image_root = os.path.join(root, split)

    def needs_generation(warn: bool) -> bool:
        if force or not split_is_current(spec, split, root):
            return True
        try:
            _read_checked(json_file, image_root)
        except ValueError as e:
            if warn:
                logger.warning(f"{e}; regenerating the '{split}' split of the shapes dataset")
            return True
        return False

    if needs_generation(warn=True):
        os.makedirs(root, exist_ok=True)
        with file_lock(os.path.join(root, "generate")):
            if needs_generation(warn=False):  # another process may have just made it
                logger.info(f"Generating the '{split}' split of the shapes dataset in {root}")
                generate_split(spec, split, root, num_workers=num_workers)
    return json_file, image_root


def register_shapes_datasets(
    root: Optional[str] = None, spec: Optional[ShapesSpec] = None, num_workers: Optional[int] = None
) -> Dict[str, str]:
    """Register the embedded splits under the `SHAPES_DATASETS` names; cheap and idempotent.

    Nothing is read or written here: a split is generated (see `ensure_shapes_split`) the first
    time it is loaded with `DatasetCatalog.get`. Metadata: `thing_classes` (`CLASS_NAMES`),
    `thing_dataset_id_to_contiguous_id`, `json_file`, `image_root`, `evaluator_type="coco"`,
    `shapes_spec` (the spec as a dict). Note that detectron2's `COCOEvaluator` reads `json_file`
    when built: `DefaultTrainer` loads the test set first; other callers that evaluate before
    loading should call `ensure_shapes_split` first.

    Args:
        root: dataset folder (default: `default_shapes_root()`, read now).
        spec: dataset knobs (default: `ShapesSpec()`). Registering again with another root or
            spec replaces the registrations.
        num_workers: processes used if generation is needed (see `generate_split`).

    Returns:
        {split: dataset name}.
    """
    root = os.path.abspath(root or default_shapes_root())
    spec = spec or ShapesSpec()

    def load(split: str, name: str) -> List[Dict]:
        json_file, image_root = ensure_shapes_split(split, root, spec, num_workers)
        # ensure_shapes_split has just checked the images (or made them)
        return load_coco_json_checked(json_file, image_root, name, check_images=False)

    for split, name in SHAPES_DATASETS.items():
        _register(
            name,
            functools.partial(load, split, name),
            dict(
                thing_classes=list(CLASS_NAMES),
                thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CLASS_NAMES))},
                json_file=os.path.join(root, "annotations", f"{split}.json"),
                image_root=os.path.join(root, split),
                evaluator_type="coco",
                shapes_spec=dataclasses.asdict(spec),
            ),
        )
    return dict(SHAPES_DATASETS)
