"""Registers the datasets a config names: the embedded shapes splits and a user's COCO JSON."""

from detectron2.config import CfgNode

from .datasets import register_coco_instances_checked, register_shapes_datasets

CUSTOM_TRAIN = "d2align_custom_train"
CUSTOM_TEST = "d2align_custom_test"


def register_data_from_config(cfg: CfgNode) -> None:
    """Register what `cfg` needs, in place; call before `cfg.freeze()`.

    * The embedded splits (`d2align_shapes_train`, `d2align_shapes_val`) are always registered;
      their images are generated on first load.
    * `D2ALIGN.DATA.TRAIN_JSON` / `TEST_JSON` (with `TRAIN_IMAGES` / `TEST_IMAGES`), when set,
      are validated, registered as `d2align_custom_train` / `d2align_custom_test`, and replace
      `DATASETS.TRAIN` / `DATASETS.TEST`.

    Raises:
        ValueError: a JSON is set without its image folder (naming the key), or the JSON is
            malformed (naming the file and the record).
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
