"""A fast check that an image file can be decoded and has the size its annotation file says.

Reading every pixel of a COCO-sized dataset at registration would take minutes; this reads the
header (format, width, height, EXIF orientation, as detectron2's `read_image` applies it) and
the last kilobyte, where a complete JPEG has its end-of-image marker and a complete PNG its
IEND chunk. It catches the files that otherwise fail deep inside a data-loader worker with an
error naming no file: a zero-byte file, a file that is not an image (e.g. HTML named `.jpg`),
a truncated JPEG or PNG, and an image whose size differs from the JSON's width / height; and
16-bit or floating-point images (PIL modes I;16, I, F), which detectron2's reader clips to
8 bits, so that a 16-bit PNG reads as nearly all white. Damage in the middle of a file is only
seen when it is decoded: the data loader's `NamingDatasetMapper` names the file then.
"""

import os
from typing import Optional

from PIL import Image, UnidentifiedImageError

__all__ = ["image_file_problem"]

_TAIL_BYTES = 1024
# Formats whose end can be recognised: the marker a complete file has in its last bytes. In
# JPEG entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so
# FF D9 (end of image) cannot occur there.
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}
_EXIF_FORMATS = ("JPEG", "MPO")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# PIL modes of more than 8 bits per channel, which detectron2's read_image clips to 8 bits
_WIDE_MODES = {
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I;16N": "16-bit",
    "I": "32-bit integer",
    "F": "32-bit float",
}


def _orientation(img: Image.Image, fmt: str) -> Optional[int]:
    """The EXIF orientation detectron2's `read_image` applies, read from the header only:
    JPEG's EXIF segment, or a PNG's eXIf chunk placed before the image data (where Pillow and
    other writers put it; PIL would decode the whole PNG to find one after IDAT)."""
    if fmt in _EXIF_FORMATS:
        return img.getexif().get(_EXIF_ORIENTATION)
    raw = img.info.get("exif") if fmt == "PNG" else None
    if not raw:
        return None
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(_EXIF_ORIENTATION)


def image_file_problem(path: str, width: int, height: int) -> Optional[str]:
    """What is wrong with the image file at `path`, or None if it looks complete and has the
    expected size.

    Args:
        path (str): the image file.
        width (int), height (int): its size in pixels according to the annotation file, after
            EXIF orientation (as detectron2 reads it).

    Returns:
        None, or a phrase to put after the path, e.g. "is empty (0 bytes)", "is not an image
        PIL can read", "is truncated (a JPEG without its end-of-image marker)",
        "is 50x40 pixels but the annotation file says 60x40".
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        return "not found"
    if size == 0:
        return "is empty (0 bytes)"
    try:
        with Image.open(path) as img:
            fmt, (w, h), mode = img.format, img.size, img.mode
            orientation = _orientation(img, fmt)
    except Image.DecompressionBombError as e:  # a header claiming e.g. 30000 x 30000 pixels
        return f"claims more pixels than PIL decodes safely ({e})"
    except (UnidentifiedImageError, OSError, ValueError) as e:
        return f"is not an image PIL can read ({type(e).__name__}: {e})"
    if mode in _WIDE_MODES:
        return (
            f"is a {_WIDE_MODES[mode]} image (PIL mode {mode}): detectron2 reads it clipped to 8 "
            "bits (mostly white); convert it to 8-bit RGB or grayscale"
        )
    end = _END_MARKERS.get(fmt)
    if end is not None:
        with open(path, "rb") as f:
            f.seek(max(0, size - _TAIL_BYTES))
            if end not in f.read():
                return f"is truncated (a {fmt} file without its end marker)"
    if orientation in _TRANSPOSED:
        w, h = h, w
    if (w, h) != (width, height):
        return f"is {w}x{h} pixels but the annotation file says {width}x{height}"
    return None
