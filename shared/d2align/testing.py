"""Helpers for tests and benchmarks: a tiny shapes dataset and a CPU-sized training config, tiny
model configs, fixed batches, seeded heads and short SGD runs. Not imported by production code."""

import contextlib
import math
import os
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pytest
import torch

# cpu-module: test helpers build CPU inputs; tests that run on CUDA move them (`.to(device)`)
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from .data.datasets import register_coco_instances_checked
from .data.synthetic import ShapesSpec, generate_split, render_sample
from .engine import Trainer, build_config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))  # checkout


def register_tiny_shapes(
    root: str,
    num_train: int = 8,
    num_val: int = 4,
    image_size: int = 128,
    seed: int = 0,
    prefix: str = "d2align_tiny",
    **spec_kwargs,
) -> Tuple[str, str]:
    """Generate a tiny shapes dataset under `root` (no progress bar) and register its splits.

    Returns:
        (train dataset name, val dataset name): `<prefix>_train`, `<prefix>_val`.
    """
    spec = ShapesSpec(
        image_size=image_size,
        num_train=num_train,
        num_val=num_val,
        object_size=(12.0, image_size * 0.8),
        seed=seed,
        **spec_kwargs,
    )
    names = []
    for split in ("train", "val"):
        json_file = generate_split(spec, split, root, num_workers=1, progress=False)
        name = f"{prefix}_{split}"
        register_coco_instances_checked(name, json_file, os.path.join(root, split))
        names.append(name)
    return names[0], names[1]


def tiny_training_config(
    config_file: str,
    output_dir: str,
    datasets: Tuple[str, str],
    max_iter: int = 10,
    image_size: int = 128,
    opts: Sequence[str] = (),
    config_hooks: Iterable = (),
) -> CfgNode:
    """A config from `config_file` (relative to the repository root) shrunk for a CPU test:
    the given (train, test) datasets, small images, batch 2, no workers, `max_iter` iterations.
    """
    shrink = [
        "DATASETS.TRAIN",
        f"('{datasets[0]}',)",
        "DATASETS.TEST",
        f"('{datasets[1]}',)",
        "INPUT.MIN_SIZE_TRAIN",
        f"({image_size},)",
        "INPUT.MAX_SIZE_TRAIN",
        str(image_size),
        "INPUT.MIN_SIZE_TEST",
        str(image_size),
        "INPUT.MAX_SIZE_TEST",
        str(image_size),
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.STEPS",
        "()",
        "SOLVER.CHECKPOINT_PERIOD",
        str(10**6),
        "DATALOADER.NUM_WORKERS",
        "0",
        "TEST.EVAL_PERIOD",
        "0",
        "MODEL.DEVICE",
        "cpu",
        "OUTPUT_DIR",
        output_dir,
    ]
    return build_config(os.path.join(ROOT, config_file), shrink + list(opts), config_hooks)


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test (on a shared 2-core machine, two threads contend
    and run far slower; seeded values were recorded with one thread).

    Import it into a test module and request it by name, or make it autouse there with
    `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Square anchors of three scales per level (RetinaNet's 2^(k/3)): neighbouring sizes overlap with
# IoU 0.64, so the candidates of one location overlap above an NMS threshold of 0.5.
THREE_SCALE_ANCHORS = (
    "[[8, 10, 12.7], [16, 20, 25.4], [28, 35, 44.5], [48, 60, 76], [80, 100, 127]]"
)


def tiny_retinanet_opts(anchor_sizes: str = THREE_SCALE_ANCHORS) -> List[str]:
    """Config overrides shrinking a RetinaNet config to a tiny CPU model for 64 px images.

    32 FPN channels, one head conv, no head norm (per-level BN needs > 1 value per channel,
    which P7 (1x1) of one 64 px image does not give), square anchors of `anchor_sizes`.

    Args:
        anchor_sizes: MODEL.ANCHOR_GENERATOR.SIZES, one list per level P3..P7.

    Returns:
        The overrides as a flat [key, value, ...] list.
    """
    return [
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.RETINANET.NUM_CONVS", "1",
        "MODEL.RETINANET.NORM", "",
        "MODEL.ANCHOR_GENERATOR.SIZES", anchor_sizes,
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]",
    ]  # fmt: skip


def tiny_rcnn_opts(post_nms_topk_test: int = 8) -> List[str]:
    """Config overrides shrinking a Faster / Cascade R-CNN config to a tiny CPU model with
    random weights: 32 FPN channels, a 32-wide box head, 64 proposals in training and
    `post_nms_topk_test` at test time, 32 sampled RoIs per image.

    Args:
        post_nms_topk_test: MODEL.RPN.POST_NMS_TOPK_TEST.

    Returns:
        The overrides as a flat [key, value, ...] list.
    """
    return [
        "MODEL.DEVICE", "cpu",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
        "MODEL.RPN.POST_NMS_TOPK_TEST", str(post_nms_topk_test),
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    ]  # fmt: skip


def gt_instances(boxes: Sequence, classes: Sequence[int], image_size: int = 64) -> Instances:
    """Ground truth of one square image.

    Args:
        boxes: N boxes (x0, y0, x1, y1) in pixels, N >= 0.
        classes: N class indices.
        image_size: side of the image in pixels.

    Returns:
        Instances with gt_boxes (Boxes[N], float32) and gt_classes (Tensor[N], int64).
    """
    instances = Instances((image_size, image_size))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return instances


def noise_image_input(
    boxes: Sequence, classes: Sequence[int], generator: torch.Generator, image_size: int = 64
) -> dict:
    """A model input of uniform noise in [0, 255) with the given ground truth.

    Args:
        boxes: N boxes (x0, y0, x1, y1) in pixels.
        classes: N class indices.
        generator: draws the image (one `torch.rand` call of 3 x size x size values).
        image_size: side of the image in pixels.

    Returns:
        {"image": Tensor[3, size, size], "instances": Instances}.
    """
    target = gt_instances(boxes, classes, image_size)
    image = torch.rand(3, image_size, image_size, generator=generator) * 255
    return {"image": image, "instances": target}


# ground truths (boxes, classes) of 64 px images: two objects (overlapping), no object
TWO_OBJECTS = ([[8.0, 10.0, 40.0, 50.0], [30.0, 4.0, 60.0, 28.0]], [1, 4])
NO_OBJECT = ([], [])


def noise_batch(
    *ground_truths: Tuple[Sequence, Sequence[int]], seed: int = 0, image_size: int = 64
):
    """Model inputs of uniform noise, one per ground truth, drawn in order from one generator.

    Args:
        ground_truths: (boxes, classes) of each image, e.g. TWO_OBJECTS, NO_OBJECT.
        seed: seed of the generator.
        image_size: side of the images in pixels.

    Returns:
        [{"image": Tensor[3, size, size], "instances": Instances}, ...], see `noise_image_input`.
    """
    generator = torch.Generator().manual_seed(seed)
    return [
        noise_image_input(boxes, classes, generator, image_size) for boxes, classes in ground_truths
    ]


def shapes_batch(num_images: int = 2, image_size: int = 64, seed: int = 3) -> List[dict]:
    """Training images of the embedded shapes generator as model inputs (no file I/O).

    Objects of 16 to 48 px, no empty image; boxes are the tight boxes of the objects' masks.

    Args:
        num_images: images of the "train" split, from index 0.
        image_size: side of the images in pixels.
        seed: seed of the generator's spec.

    Returns:
        [{"image": Tensor[3, size, size], "instances": Instances, "height", "width"}, ...].
    """
    spec = ShapesSpec(
        image_size=image_size, object_size=(16.0, 48.0), empty_fraction=0.0, seed=seed
    )
    batch = []
    for index in range(num_images):
        image, objects = render_sample(spec, "train", index)
        boxes = []
        for obj in objects:
            ys, xs = obj["mask"].nonzero()
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        instances = gt_instances(boxes, [o["category_id"] - 1 for o in objects], image_size)
        tensor = torch.as_tensor(image.transpose(2, 0, 1).copy()).float()
        batch.append(
            {"image": tensor, "instances": instances, "height": image_size, "width": image_size}
        )
    return batch


def randomize_retinanet_head(
    model: torch.nn.Module, cls_bias: float, cls_std: float, box_std: float
) -> None:
    """Seeded (generator seed 0) output layers of a RetinaNet head, so that scores and regressed
    boxes vary over anchors: weights N(0, 0.1) (classification) and N(0, 0.05) (regression),
    biases N(cls_bias, cls_std) and N(0, box_std).

    Args:
        model: a model with `head.cls_score` and `head.bbox_pred` (detectron2's RetinaNetHead).
        cls_bias: mean classification logit.
        cls_std: spread of the classification biases.
        box_std: spread of the regression biases.
    """
    generator = torch.Generator().manual_seed(0)
    head = model.head
    with torch.no_grad():
        for layer, std, bias, spread in (
            (head.cls_score, 0.1, cls_bias, cls_std),
            (head.bbox_pred, 0.05, 0.0, box_std),
        ):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * spread + bias)


def unnormalized_loss(model: torch.nn.Module, batch: List[dict]) -> float:
    """Total loss of a RetinaNet times the normalizer it was divided by (the normalizer is a
    moving average that starts at 100, so normalized losses are not comparable across
    iterations). Runs without gradients; call it inside an EventStorage."""
    with torch.no_grad():
        total = sum(model(batch).values()).item()
    return total * model.loss_normalizer


def overfit_retinanet(
    model: torch.nn.Module, batch: List[dict], iterations: int
) -> Tuple[float, float, torch.Tensor]:
    """SGD (lr 0.01, momentum 0.9) on one fixed batch, in training mode.

    Args:
        model: a RetinaNet with a `loss_normalizer`.
        batch: the model inputs of every iteration.
        iterations: SGD steps.

    Returns:
        (unnormalized loss before, unnormalized loss after, Tensor[iterations] of the total
        loss of every step).
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    with EventStorage():
        initial = unnormalized_loss(model, batch)
        for _ in range(iterations):
            total = sum(model(batch).values())
            totals.append(total.detach())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        final = unnormalized_loss(model, batch)
    return initial, final, torch.stack(totals)


def recorded_sgd_losses(
    model: torch.nn.Module,
    batch: List[dict],
    steps: int = 3,
    record: Sequence[int] = (0, 2),
    keys: Sequence[str] = ("loss_cls", "loss_box_reg"),
) -> List[Tuple[float, ...]]:
    """Losses at some steps of SGD (lr 0.01, momentum 0.9) on one fixed batch, in training mode:
    the seeded regression values of a model.

    Args:
        model: a detector returning a dict of losses in training.
        batch: the model inputs of every step.
        steps: SGD steps.
        record: the steps whose losses are returned (before that step's update).
        keys: the losses returned, in this order.

    Returns:
        One tuple of the `keys`' values per recorded step.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    measured = []
    with EventStorage():
        for step in range(steps):
            losses = model(batch)
            if step in record:
                measured.append(tuple(losses[key].item() for key in keys))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    return measured


@contextlib.contextmanager
def removed_after(dataset_names: Sequence[str]):
    """Remove the named datasets from detectron2's DatasetCatalog and MetadataCatalog when the
    block ends, even on an error (so that a later test may register the same names).

    Args:
        dataset_names: registered dataset names, e.g. those of `register_tiny_shapes`.
    """
    try:
        yield
    finally:
        for name in dataset_names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def train_from_scratch(cfg: CfgNode, hooks: Sequence = ()) -> Tuple[Trainer, dict]:
    """Train d2align's Trainer on `cfg` from its initial weights (no resuming).

    Args:
        cfg: a training config, e.g. of `tiny_training_config`.
        hooks: detectron2 hooks registered after the default ones.

    Returns:
        (the trainer after training, the results of its final evaluation: {} without one).
    """
    trainer = Trainer(cfg)
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    return trainer, results


class RecordPerClassNMS:
    """Mixin, before a D2AlignRetinaNet class in the bases, that records `(candidates, copy of
    the detections)` of every `per_class_nms` call in the model's `records` list (set it to []
    first). The detections are copied: detectron2's post-processing then clips their boxes in
    place."""

    records: list

    def per_class_nms(self, candidates: Instances) -> Instances:
        detections = super().per_class_nms(candidates)
        copy = Instances(detections.image_size)
        copy.pred_boxes = Boxes(detections.pred_boxes.tensor.clone())
        copy.scores = detections.scores.clone()
        copy.pred_classes = detections.pred_classes.clone()
        self.records.append((candidates, copy))
        return detections


def random_features(
    input_shape: Dict[str, ShapeSpec], num_images: int, image_size: int, generator: torch.Generator
) -> Dict[str, torch.Tensor]:
    """Standard-normal feature maps of square images, drawn from `generator` level by level.

    Args:
        input_shape: feature name -> ShapeSpec (channels, stride), e.g. p2..p5.
        num_images: N, the batch size.
        image_size: side of the images in pixels.
        generator: draws the values.

    Returns:
        name -> Tensor[N, channels, size // stride, size // stride].
    """
    return {
        name: torch.randn(
            num_images,
            shape.channels,
            image_size // shape.stride,
            image_size // shape.stride,
            generator=generator,
        )
        for name, shape in input_shape.items()
    }


def random_proposals(
    num: int,
    generator: torch.Generator,
    max_corner: float,
    min_size: float,
    size_span: float,
    image_size: int = 64,
) -> Instances:
    """Random proposals of one square image, drawn from `generator`: top-left corners uniform in
    [0, max_corner), widths and heights uniform in [min_size, min_size + size_span), clipped to
    the image, and standard-normal objectness logits.

    Args:
        num: R, the number of proposals.
        generator: draws corners, then sizes, then logits.
        max_corner: bound of the corners' coordinates in pixels.
        min_size: smallest width and height in pixels.
        size_span: range of the widths and heights above `min_size`.
        image_size: side of the image in pixels.

    Returns:
        Instances with proposal_boxes (Boxes[R]) and objectness_logits (Tensor[R]).
    """
    xy = torch.rand(num, 2, generator=generator) * max_corner
    wh = min_size + torch.rand(num, 2, generator=generator) * size_span
    proposals = Instances((image_size, image_size))
    proposals.proposal_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=image_size)], dim=1))
    proposals.objectness_logits = torch.randn(num, generator=generator)
    return proposals


def train_and_evaluate_on_tiny_shapes(
    config_file: str,
    root: str,
    prefix: str,
    config_hooks: Iterable = (),
    max_iter: int = 3,
    opts: Sequence[str] = ("MODEL.FPN.OUT_CHANNELS", "32"),
) -> Tuple[Trainer, dict]:
    """Train `config_file` from scratch on a tiny registered shapes dataset and evaluate it: 4
    training and 2 validation images of 64 px, half of them empty, generated under `root`; the
    datasets are unregistered afterwards.

    Args:
        config_file: the config, absolute or relative to the repository root.
        root: folder of the data (`root`/data) and of the output (`root`/out).
        prefix: prefix of the dataset names (unique per test).
        config_hooks: functions adding the project's config keys.
        max_iter: training iterations.
        opts: further config overrides.

    Returns:
        (the trainer after training, the results of its final evaluation).
    """
    data = register_tiny_shapes(
        os.path.join(root, "data"), num_train=4, num_val=2, image_size=64, empty_fraction=0.5,
        prefix=prefix,
    )  # fmt: skip
    with removed_after(data):
        cfg = tiny_training_config(
            config_file, os.path.join(root, "out"), data, max_iter=max_iter, image_size=64,
            opts=opts, config_hooks=config_hooks,
        )  # fmt: skip
        return train_from_scratch(cfg)


def lone_boxes_and_one_duplicated_object(
    num_lone: int = 100, lone_score: float = 0.45, pair_scores=(0.50, 0.49)
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The layout where CL-balanced NMS meets a detection cap (DC Loss): `num_lone` isolated
    20 x 20 boxes at `lone_score` on a 60-px grid, then one 40 x 40 object detected twice at
    `pair_scores` (boxes shifted by 12 px: IoU 0.54, one cluster at NMS threshold 0.5). A lone
    box has dis = 1, the pair's chosen box less, so ranking by p + dis puts every lone box
    first; ranked by p, the object's detection comes first.

    Returns:
        boxes (Tensor[num_lone + 2, 4]) XYXY, the pair last; scores (Tensor[num_lone + 2]).
    """
    side = math.ceil(math.sqrt(num_lone))
    ij = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    corners = ij.reshape(-1, 2)[:num_lone].float() * 60
    lone = torch.cat([corners, corners + 20], dim=1)
    origin = 60.0 * side + 40
    pair = torch.tensor([[origin, origin, origin + 40, origin + 40],
                         [origin + 12, origin, origin + 52, origin + 40]])  # fmt: skip
    scores = torch.tensor([lone_score] * num_lone + list(pair_scores))
    return torch.cat([lone, pair]), scores


def _proc_stat(pid) -> Optional[List[str]]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), or None
    when there is no such process (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_gone(pid: int) -> bool:
    """No such process any more (or only a zombie waiting for its reaper)."""
    fields = _proc_stat(pid)
    return fields is None or fields[0] == "Z"


def live_processes(parent: Optional[int] = None, group: Optional[int] = None) -> List[int]:
    """PIDs of the live (non-zombie) processes whose parent is `parent` and / or whose process
    group is `group` (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        fields = _proc_stat(entry) if entry.isdigit() else None
        if fields is None or fields[0] == "Z":
            continue
        if (parent is None or int(fields[1]) == parent) and (
            group is None or int(fields[2]) == group
        ):
            found.append(int(entry))
    return found


# ----- one SGD step that is equal whatever the number of processes (issues 14 and 25)

EXACT_STEP_CONFIG = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
EXACT_STEP_SIZE = 64  # px: 1023 anchors per image on P2-P6 with 3 aspect ratios


def exact_step_opts(data_root: str, out, weights) -> List[str]:
    """Overrides of `EXACT_STEP_CONFIG` for one SGD step of detectron2's RPN-only detector
    (`ProposalNetwork`) with every anchor sampled (RPN.BATCH_SIZE_PER_IMAGE >= anchors per
    image, POSITIVE_FRACTION 1), no flip, batch 4 in all: its loss is then a deterministic sum
    over anchors divided by a fixed normaliser, so N processes x batch 4/N equal one process x
    batch 4 up to float summation order. The first 6 entries are the model's; see
    `exact_step_setup`."""
    return [
        "MODEL.META_ARCHITECTURE", "ProposalNetwork",
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "1024",
        "MODEL.RPN.POSITIVE_FRACTION", "1.0",
        "MODEL.WEIGHTS", str(weights),
        "D2ALIGN.DATA.TRAIN_JSON", os.path.join(data_root, "annotations", "train.json"),
        "D2ALIGN.DATA.TRAIN_IMAGES", os.path.join(data_root, "train"),
        "DATASETS.TEST", "()",
        "INPUT.RANDOM_FLIP", "none",
        "INPUT.MIN_SIZE_TRAIN", f"({EXACT_STEP_SIZE},)",
        "INPUT.MAX_SIZE_TRAIN", str(EXACT_STEP_SIZE),
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.BASE_LR", "0.05",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.STEPS", "()",
        "SOLVER.MAX_ITER", "1",
        "DATALOADER.NUM_WORKERS", "0",
        "MODEL.DEVICE", "cpu",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip


def exact_step_setup(root) -> Tuple[str, str, dict]:
    """A train split of exactly 4 images (none empty) under `root`/data and the initial
    weights `root`/init.pth of the runs compared; returns (data root, weights, state dict)."""
    data = os.path.join(str(root), "data")
    register_tiny_shapes(
        data, num_train=4, num_val=1, image_size=EXACT_STEP_SIZE, empty_fraction=0.0
    )
    cfg = build_config(os.path.join(ROOT, EXACT_STEP_CONFIG), exact_step_opts(data, root, "")[:6])
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    from .checkpoint import D2AlignCheckpointer

    D2AlignCheckpointer(model, str(root)).save("init")
    return data, os.path.join(str(root), "init.pth"), model.state_dict()


def read_metrics(out) -> List[dict]:
    """The records of `out`/metrics.json (detectron2's JSON writer), in order."""
    import json

    with open(os.path.join(str(out), "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def crashing_interpreter(path) -> str:
    """Write an executable at `path` standing for the trainings' Python: it starts a Python
    process that reads address 0 (SIGSEGV in native code, as a crash inside a C++ op or
    pycocotools would). Returns its path, as a string for a suite's `python`."""
    crash = "import ctypes; ctypes.string_at(0)"
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec '{sys.executable}' -c '{crash}'\n")
    os.chmod(path, 0o755)
    return str(path)
