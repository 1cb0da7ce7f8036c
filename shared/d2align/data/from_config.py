"""Registers the datasets a config names: the embedded shapes splits and a user's COCO JSON."""

from detectron2.config import CfgNode

from .datasets import (
    SHAPES_DATASETS,
    check_dataset_classes,
    register_coco_instances_checked,
    register_shapes_datasets,
)

CUSTOM_TRAIN = "d2align_custom_train"
CUSTOM_TEST = "d2align_custom_test"
SHAPES_VAL = SHAPES_DATASETS["val"]


def register_data_from_config(cfg: CfgNode) -> None:
    """Register what `cfg` needs, in place; call before `cfg.freeze()`.

    * The embedded splits (`d2align_shapes_train`, `d2align_shapes_val`) are always registered;
      their images are generated on first load.
    * `D2ALIGN.DATA.TRAIN_JSON` / `TEST_JSON` (with `TRAIN_IMAGES` / `TEST_IMAGES`), when set,
      are validated, registered as `d2align_custom_train` / `d2align_custom_test`, and replace
      `DATASETS.TRAIN` / `DATASETS.TEST`.
    * A custom training set without a test set of its own is refused while DATASETS.TEST is
      still the embedded validation split; training and test sets must have the same classes
      (`check_dataset_classes`).

    Raises:
        ValueError: a JSON is set without its image folder (naming the key), the JSON is
            malformed (naming the file and the record), the test set is missing or has other
            classes (naming the keys or both files).
    """
    register_shapes_datasets()
    data = cfg.D2ALIGN.DATA
    for split, name in (("TRAIN", CUSTOM_TRAIN), ("TEST", CUSTOM_TEST)):
        json_file, image_root = data[f"{split}_JSON"], data[f"{split}_IMAGES"]
        if not json_file:
            if image_root:
                raise ValueError(f"D2ALIGN.DATA.{split}_IMAGES is set but {split}_JSON is empty")
            continue
        if not image_root:
            raise ValueError(f"D2ALIGN.DATA.{split}_JSON is set but {split}_IMAGES is empty")
        register_coco_instances_checked(name, json_file, image_root)
        cfg.DATASETS[split] = (name,)
    if data.TRAIN_JSON and not data.TEST_JSON and tuple(cfg.DATASETS.TEST) == (SHAPES_VAL,):
        raise ValueError(
            "D2ALIGN.DATA.TRAIN_JSON is set but D2ALIGN.DATA.TEST_JSON is not: the model would "
            f"be evaluated on the embedded '{SHAPES_VAL}'; set D2ALIGN.DATA.TEST_JSON and "
            "TEST_IMAGES (or DATASETS.TEST, e.g. () for no evaluation)"
        )
    check_dataset_classes(cfg.DATASETS.TRAIN, cfg.DATASETS.TEST)
