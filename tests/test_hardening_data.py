"""Issue 14, item 3: corrupt image files are refused at registration, naming the file and the
record; the embedded dataset's cache regenerates a split whose images are corrupted."""

import json
import logging
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from d2align.data import ShapesSpec, ensure_shapes_split, register_coco_instances_checked
from d2align.data.image_check import image_file_problem

W, H = 50, 40


def _noise(size):
    rng = np.random.default_rng(0)  # noise: an image body of a few kilobytes
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _jpeg(path, size=(W, H)):
    _noise(size).save(path, format="JPEG", quality=95)


def _png(path, size=(W, H)):
    _noise(size).save(path, format="PNG")


def _cut(path, keep: float):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def _dataset(tmp_path, spoil):
    """A COCO JSON with two images (a.jpg, b.png), b.png spoiled by `spoil(path)`."""
    root = tmp_path / "images"
    root.mkdir()
    _jpeg(root / "a.jpg")
    _png(root / "b.png")
    spoil(root / "b.png")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "b.png", "height": H, "width": W},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    json_file = tmp_path / "ann.json"
    json_file.write_text(json.dumps(coco))
    return str(json_file), str(root)


def _html(path):
    path.write_text("<html><body>404 Not Found</body></html>")


def _empty(path):
    path.write_bytes(b"")


def _truncated_png(path):
    _cut(path, 0.6)


def _other_size(path):
    _png(path, size=(W + 10, H))


def _truncated_jpeg_named_png(path):
    _jpeg(path)
    _cut(path, 0.5)


def _sixteen_bit(path):
    """A 16-bit grayscale PNG (values around 30000: read as 8 bits, nearly all 255)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(20000, 40000, (H, W), dtype=np.uint16)).save(path, format="PNG")


@pytest.mark.parametrize(
    "spoil, problem",
    [
        (_empty, r"is empty \(0 bytes\)"),
        (_html, r"is not an image PIL can read \(UnidentifiedImageError"),
        (_truncated_png, r"is truncated \(a PNG file without its end marker\)"),
        (_truncated_jpeg_named_png, r"is truncated \(a JPEG file without its end marker\)"),
        (_other_size, r"is 60x40 pixels but the annotation file says 50x40"),
        (_sixteen_bit, r"is a 16-bit image \(PIL mode I;16\): detectron2 reads it clipped"),
    ],
)
def test_corrupt_image_refused_at_registration(tmp_path, spoil, problem):
    json_file, root = _dataset(tmp_path, spoil)
    where = r"ann\.json: images\[1\] \(id=2, file_name='b\.png'\): image file .*b\.png "
    with pytest.raises(ValueError, match=where + problem):
        register_coco_instances_checked("d2align_h14_corrupt", json_file, root)


def test_complete_images_pass(tmp_path):
    json_file, root = _dataset(tmp_path, lambda path: None)
    register_coco_instances_checked("d2align_h14_clean", json_file, root)  # must not raise
    assert image_file_problem(os.path.join(root, "a.jpg"), W, H) is None


def test_exif_rotated_jpeg_uses_the_oriented_size(tmp_path):
    # detectron2's read_image applies the EXIF orientation: a 50x40 JPEG with orientation 6
    # (rotated 90 degrees) is a 40x50 image for the annotations.
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(path, exif=exif)
    assert image_file_problem(str(path), H, W) is None
    assert "is 40x50 pixels" in image_file_problem(str(path), W, H)


def test_exif_rotated_png_uses_the_oriented_size_as_detectron2_reads_it(tmp_path):
    # A PNG's eXIf chunk is applied by detectron2's read_image as a JPEG's EXIF is: a 50x40
    # PNG with orientation 6 is read as 40x50. The check used to ignore it for PNGs and so
    # refused the right annotation size and accepted the wrong one.
    from detectron2.data.detection_utils import read_image

    path = tmp_path / "rot.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(path, exif=exif)
    assert read_image(str(path)).shape[:2] == (W, H)  # detectron2: W rows, H columns
    assert image_file_problem(str(path), H, W) is None
    assert "is 40x50 pixels" in image_file_problem(str(path), W, H)


def test_embedded_cache_regenerates_a_corrupted_split(tmp_path, caplog):
    spec = ShapesSpec(image_size=64, num_train=3, num_val=2, object_size=(8.0, 48.0))
    root = str(tmp_path / "shapes")
    json_file, image_root = ensure_shapes_split("val", root, spec, num_workers=1)
    path = os.path.join(image_root, "000001.jpg")
    original = open(path, "rb").read()
    stamp = os.stat(os.path.join(image_root, "000000.jpg")).st_mtime_ns
    ensure_shapes_split("val", root, spec, num_workers=1)  # current: nothing is rewritten
    assert os.stat(os.path.join(image_root, "000000.jpg")).st_mtime_ns == stamp

    _cut(path, 0.5)
    caplog.set_level(logging.WARNING, logger="d2align")
    ensure_shapes_split("val", root, spec, num_workers=1)
    assert open(path, "rb").read() == original  # regenerated, identical (deterministic)
    warned = [r.getMessage() for r in caplog.records if "regenerating" in r.getMessage()]
    assert len(warned) == 1 and "000001.jpg is truncated" in warned[0]


def test_a_jpeg_damaged_in_the_middle_is_named_when_decoded(tmp_path):
    """Header and end marker intact, the entropy-coded data garbled: the registration check
    passes (it reads header and tail only); decoding in the data loader's mapper fails with an
    error naming the file and its record, not a bare `OSError: broken data stream`."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from d2align.data.mapper import NamingDatasetMapper
    from d2align.engine import build_config

    json_file, root = _dataset(tmp_path, lambda path: None)
    big = os.path.join(root, "a.jpg")
    _noise((W * 8, H * 8)).save(big, format="JPEG", quality=95)
    coco = json.loads(open(json_file).read())
    coco["images"][0].update(width=W * 8, height=H * 8)
    open(json_file, "w").write(json.dumps(coco))
    data = bytearray(open(big, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 4] = b"\xff\xda\x00\x02"  # a start-of-scan marker with no scan
    open(big, "wb").write(bytes(data))
    assert image_file_problem(big, W * 8, H * 8) is None  # not seen without decoding
    name = "d2align_h26_damaged_jpeg"
    register_coco_instances_checked(name, json_file, root)
    try:
        (record,) = [r for r in DatasetCatalog.get(name) if r["file_name"].endswith("a.jpg")]
        cfg = build_config("", ["INPUT.MIN_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"])
        mapper = NamingDatasetMapper(cfg, is_train=False)
        with pytest.raises(ValueError, match=r"a\.jpg \(image id 1\): cannot be read"):
            mapper(record)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_absurd_inputs_name_the_file(tmp_path):
    """A JSON nested beyond Python's recursion limit, a PNG whose header claims 30000 x 30000
    pixels, an OUTPUT_DIR that is a file: each refused naming the file or the key."""
    from d2align.data.datasets import load_coco_json_checked
    from d2align.engine.launcher import load_config

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=r"deep\.json: cannot read a COCO JSON file: Recursion"):
        load_coco_json_checked(str(deep), str(tmp_path))
    bomb = tmp_path / "bomb.png"
    _png(bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width and height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # the IHDR's CRC
    bomb.write_bytes(bytes(data))
    assert "claims more pixels than PIL decodes safely" in image_file_problem(
        str(bomb), 30000, 30000
    )
    a_file = tmp_path / "out"
    a_file.write_text("")
    with pytest.raises(ValueError, match=r"OUTPUT_DIR = '.*out': is a file"):
        load_config("", ["OUTPUT_DIR", str(a_file)])
