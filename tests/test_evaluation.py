"""D2AlignCOCOEvaluator's AP50...AP90 columns against direct pycocotools computations."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from d2align.evaluation import AP_IOU_THRESHOLDS, D2AlignCOCOEvaluator

# Two 100x100 images, two categories, XYWH boxes.
GT_BOXES = {
    1: [(1, [10, 10, 30, 20]), (2, [50, 40, 40, 40])],
    2: [(1, [5, 60, 20, 30]), (1, [60, 5, 30, 30]), (2, [20, 20, 10, 50])],
}


def _write_gt(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in GT_BOXES]
    anns = []
    for image_id, boxes in GT_BOXES.items():
        for cat, (x, y, w, h) in boxes:
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=image_id,
                    category_id=cat,
                    bbox=[x, y, w, h],
                    area=w * h,
                    iscrowd=0,
                )
            )
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def _shifted(box, dx):
    x, y, w, h = box
    return [x + dx, y, w, h]


def _predictions(kind):
    """{image_id: [(category_id, xywh, score)]} for the named prediction set."""
    if kind == "empty":
        return {i: [] for i in GT_BOXES}
    preds = {}
    rng = np.random.default_rng(0)
    for image_id, boxes in GT_BOXES.items():
        preds[image_id] = []
        for cat, box in boxes:
            dx = 0.0 if kind == "perfect" else float(rng.uniform(0, 0.35) * box[2])
            preds[image_id].append((cat, _shifted(box, dx), float(rng.uniform(0.3, 1.0))))
        if kind == "noisy":  # plus a false positive and a duplicate
            preds[image_id].append((2, [0, 0, 15, 15], 0.9))
            cat, box = boxes[0]
            preds[image_id].append((cat, _shifted(box, 2.0), 0.2))
    return preds


def _direct_ap(gt_json, preds, iou):
    """AP (%) at one IoU threshold, computed by pycocotools alone."""
    dets = [
        dict(image_id=i, category_id=c, bbox=b, score=s)
        for i, ps in preds.items()
        for c, b, s in ps
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.iouThrs = np.array([iou])
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0] * 100


def _evaluate(gt_json, preds, name, tmp_path):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        json_file=gt_json, thing_classes=["a", "b"], thing_dataset_id_to_contiguous_id={1: 0, 2: 1}
    )
    evaluator = D2AlignCOCOEvaluator(name, output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    for image_id, ps in preds.items():
        inst = Instances((100, 100))
        xywh = torch.tensor([b for _, b, _ in ps], dtype=torch.float32).reshape(-1, 4)
        inst.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        inst.scores = torch.tensor([s for _, _, s in ps], dtype=torch.float32)
        inst.pred_classes = torch.tensor([c - 1 for c, _, _ in ps], dtype=torch.int64)
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]


@pytest.mark.parametrize("kind", ["perfect", "noisy", "shifted"])
def test_ap_columns_match_pycocotools(kind, tmp_path):
    gt_json = _write_gt(tmp_path)
    preds = _predictions(kind)
    results = _evaluate(gt_json, preds, f"d2align_test_eval_{kind}", tmp_path)
    for thr in AP_IOU_THRESHOLDS:
        key = f"AP{round(thr * 100)}"
        assert results[key] == pytest.approx(_direct_ap(gt_json, preds, thr), abs=1e-6), key
    if kind == "perfect":
        perfect = [results[f"AP{round(t * 100)}"] for t in AP_IOU_THRESHOLDS]
        assert perfect == pytest.approx([100.0] * len(AP_IOU_THRESHOLDS))
    if kind == "shifted":  # boxes shifted by up to 35% of their width: AP must fall with IoU
        assert results["AP50"] > results["AP90"]


def test_empty_predictions_give_zero(tmp_path):
    gt_json = _write_gt(tmp_path)
    results = _evaluate(gt_json, _predictions("empty"), "d2align_test_eval_empty", tmp_path)
    for key in ["AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90"]:
        assert results[key] == 0.0, key
