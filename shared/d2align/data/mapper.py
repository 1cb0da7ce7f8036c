"""A dataset mapper whose errors name the image: detectron2's `DatasetMapper` raises from deep
inside PIL (e.g. `OSError: broken data stream` for a JPEG damaged in the middle, whose header
and end marker pass the registration check) with no file name, in a data-loader worker, at
some iteration. `NamingDatasetMapper` re-raises any such error as a ValueError naming the file
and its record (image id), keeping the original as its cause.
"""

from typing import Callable, Dict

from detectron2.data import DatasetMapper

__all__ = ["NamingDatasetMapper", "naming_errors"]


def naming_errors(mapper: Callable[[Dict], Dict]) -> Callable[[Dict], Dict]:
    """`mapper` with its exceptions re-raised as ValueError("<file_name> (image id <id>): ...")."""

    def mapped(record: Dict) -> Dict:
        try:
            return mapper(record)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(
                f"{record.get('file_name', '?')} (image id {record.get('image_id', '?')}): "
                f"cannot be read or mapped: {type(e).__name__}: {e}"
            ) from e

    return mapped


class NamingDatasetMapper(DatasetMapper):
    """detectron2's `DatasetMapper` whose errors name the image file and its record."""

    def __call__(self, dataset_dict: Dict) -> Dict:
        return naming_errors(super().__call__)(dataset_dict)
