"""Standalone IoU-Net as a post-processor of another detector (§4.1-4.2)."""

import importlib.util
import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou

from d2align.ops import iou_guided_nms_reference
from d2align.projects.iou_net import DetectorWithIoUNet, add_iou_net_config
from d2align.testing import register_tiny_shapes, tiny_training_config

DETECTOR = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
STANDALONE = "projects/IoUNet/configs/shapes/standalone_iounet_R18_FPN_scratch.yaml"
SMALL = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RPN.POST_NMS_TOPK_TEST", "32"]
EVALUATE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "evaluate_standalone.py")
RAW = ["MODEL.ROI_HEADS.NMS_THRESH_TEST", "1.0", "TEST.DETECTIONS_PER_IMAGE", "100000"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("iou_net_standalone")
    data = register_tiny_shapes(
        str(root / "data"), num_train=1, num_val=2, image_size=64, prefix="d2align_test_sa"
    )

    def config(path, opts):
        hooks = [add_iou_net_config]
        return tiny_training_config(
            path, str(root), data, image_size=64, opts=SMALL + opts, config_hooks=hooks
        )

    torch.manual_seed(0)
    det_cfg = config(DETECTOR, RAW)
    iou_cfg = config(STANDALONE, ["MODEL.IOU_NET.REFINE.ENABLED", "False"])
    detector, iou_net = build_model(det_cfg).eval(), build_model(iou_cfg).eval()
    batch = [inputs for (inputs,) in build_detection_test_loader(det_cfg, data[1])]
    return root, data, det_cfg, detector, iou_net, batch


def test_standalone_needs_detections_at_inference(setup):
    *_, iou_net, batch = setup
    with pytest.raises(ValueError, match="detections"):
        iou_net(batch[:1])


def test_iou_guided_nms_of_another_detectors_raw_boxes(setup):
    *_, detector, iou_net, batch = setup
    with torch.no_grad():
        raw = [r["instances"] for r in detector(batch)]
        outputs = DetectorWithIoUNet(detector, iou_net)(batch)
        features = iou_net._features(batch)
    for i, (dets, out) in enumerate(zip(raw, outputs)):
        out = out["instances"]
        assert len(dets) > 100 >= len(out) > 0  # the detector's NMS was off, IoU-Net's is on
        boxes, classes = dets.pred_boxes.tensor, dets.pred_classes
        with torch.no_grad():  # 64 px images, tested at 64 px: no rescaling
            loc = iou_net.iou_branch.iou_fn_of_image(features, i)(boxes, classes)
        keep, scores = iou_guided_nms_reference(boxes, dets.scores, loc, classes, 0.5)
        order = torch.argsort(scores, descending=True, stable=True)[:100]
        nonempty = dets.pred_boxes[keep[order]].nonempty()  # detector_postprocess drops empty
        assert torch.allclose(out.pred_boxes.tensor, boxes[keep[order]][nonempty], atol=1e-4)
        assert torch.allclose(out.scores, scores[order][nonempty])
        # no two kept boxes of one class overlap by more than Omega_nms
        same = out.pred_classes[:, None] == out.pred_classes[None, :]
        overlap = pairwise_iou(out.pred_boxes, out.pred_boxes).fill_diagonal_(0)
        assert not (same & (overlap > 0.5)).any()


def test_evaluate_standalone_command(setup):
    spec = importlib.util.spec_from_file_location("evaluate_standalone", EVALUATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root, data, det_cfg, detector, iou_net, _ = setup
    DetectionCheckpointer(detector, save_dir=str(root)).save("detector")
    DetectionCheckpointer(iou_net, save_dir=str(root)).save("iounet")
    shrink = ["DATASETS.TEST", f"('{data[1]}',)", "INPUT.MIN_SIZE_TEST", "64"]
    shrink += ["INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
    out = str(root / "eval")
    results = module.main(
        ["--detector-config", DETECTOR, "--detector-weights", str(root / "detector.pth")]
        + ["--iounet-config", STANDALONE, "--iounet-weights", str(root / "iounet.pth")]
        + ["--out", out, "--detector-opts"]
        + shrink
        + SMALL
        + ["--iounet-opts"]
        + SMALL
    )
    with open(os.path.join(out, "final_results.json")) as f:
        written = json.load(f)
    assert set(written["results"]["bbox"]) >= {"AP", "AP50", "AP60", "AP70", "AP80", "AP90"}
    assert written["results"]["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"], nan_ok=True)


def test_standalone_training_loss_on_normalised_uniform_targets(setup):
    # with a zero output layer the prediction is 0 for every box, so the loss is the mean of
    # smooth-L1(0, t) = t^2 / 2 over targets t uniform on [-1, 1]: 1/6
    root, data, *_ = setup
    opts = SMALL + ["MODEL.ROI_IOU_HEAD.PRED_INIT_STD", "0.0"]
    opts += ["MODEL.IOU_NET.NUM_JITTER_SAMPLES", "400"]
    hooks = [add_iou_net_config]
    cfg = tiny_training_config(
        STANDALONE, str(root), data, image_size=64, opts=opts, config_hooks=hooks
    )
    model = build_model(cfg).train()
    (record,) = DatasetCatalog.get(data[0])
    inputs = DatasetMapper(cfg, is_train=True)(record)
    losses = model([inputs])
    assert set(losses) == {"loss_iou"}
    assert losses["loss_iou"].item() == pytest.approx(1 / 6, abs=0.01)
    losses["loss_iou"].backward()
    assert model.iou_branch.head.iou_pred.weight.grad.abs().sum() > 0
