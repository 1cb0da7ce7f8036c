"""Issue 14, items 4, 5, 7, 8: one run per output folder, an empty test set, out-of-range values,
resuming a checkpoint without the optimizer state on detectron2 v0.6 and main."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.engine import DefaultTrainer, TrainerBase, default_argument_parser

from d2align.config import check_common_config
from d2align.engine import Trainer, build_config, load_config
from d2align.engine.launcher import RUN_LOCK, main
from d2align.lock import DirLock, LockHeld
from d2align.testing import ROOT, register_tiny_shapes, tiny_training_config

FASTER = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("h14_runs")
    return register_tiny_shapes(str(root), num_train=4, num_val=2, prefix="d2align_h14_runs")


@pytest.fixture(scope="module")
def no_gt_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("h14_no_gt")
    return register_tiny_shapes(
        str(root), num_train=2, num_val=2, prefix="d2align_h14_no_gt", empty_fraction=1.0
    )


def _args(datasets, out, *opts, eval_only=False, resume=False):
    """The command line of tools/train_net.py for a 2-iteration training of tiny images."""
    argv = ["--config-file", os.path.join(ROOT, FASTER)]
    argv += ["--eval-only"] if eval_only else []
    argv += ["--resume"] if resume else []
    cfg = tiny_training_config(FASTER, str(out), datasets, max_iter=2)
    shrink = ["DATASETS.TRAIN", str(cfg.DATASETS.TRAIN), "DATASETS.TEST", str(cfg.DATASETS.TEST)]
    for key in ("MIN_SIZE_TRAIN", "MAX_SIZE_TRAIN", "MIN_SIZE_TEST", "MAX_SIZE_TEST"):
        shrink += [f"INPUT.{key}", str(cfg.INPUT[key])]
    shrink += ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()"]
    shrink += ["SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
    shrink += ["OUTPUT_DIR", str(out)]
    return default_argument_parser().parse_args(argv + shrink + list(opts))


# -- item 4: one run per OUTPUT_DIR ---------------------------------------------------------


def _hold_lock_in_another_process(out):
    code = (
        "import sys, time\n"
        "from d2align.lock import DirLock\n"
        f"DirLock({str(out)!r}, {RUN_LOCK!r}, 'training or evaluation').acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_on_one_output_dir_is_refused_naming_the_pid(tiny_data, tmp_path):
    out = tmp_path / "out"
    holder = _hold_lock_in_another_process(out)
    try:
        with pytest.raises(LockHeld, match=rf"in use by another training .*PID {holder.pid} "):
            main(_args(tiny_data, out))
        assert not (out / "model_final.pth").exists()  # nothing was written over
        assert not (out / "metrics.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing: its lock is taken over and the run goes through.
    main(_args(tiny_data, out))
    assert (out / "model_final.pth").exists()
    assert DirLock(out, RUN_LOCK).try_acquire() is None  # released when the run ended


def test_the_lock_is_held_during_the_run(tiny_data, tmp_path):
    seen = []

    class Probe(Trainer):
        def train(self):
            seen.append(DirLock(self.cfg.OUTPUT_DIR, RUN_LOCK).try_acquire())
            return super().train()

    main(_args(tiny_data, tmp_path), trainer_cls=Probe)
    assert seen and seen[0]["pid"] == os.getpid()


# -- item 5: a test set without ground truth ------------------------------------------------


def test_empty_test_set_is_reported_and_no_nan_is_written(no_gt_data, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="d2align")
    main(_args(no_gt_data, tmp_path, eval_only=True))
    text = (tmp_path / "final_results.json").read_text()

    def refuse(constant):
        raise AssertionError(f"{constant} in final_results.json")

    payload = json.loads(text, parse_constant=refuse)
    assert payload["results"]["bbox"]["AP"] is None and payload["results"]["bbox"]["AP90"] is None
    assert payload["notes"] == [
        "bbox AP is null: the test set has no ground-truth annotation (none, or only crowd "
        "regions)"
    ]
    assert payload["speed"]["train_s_per_iter"] is None  # an evaluation has no training time
    warned = [r.getMessage() for r in caplog.records if "no ground-truth" in r.getMessage()]
    assert warned and "'d2align_h14_no_gt_val'" in warned[0] and "2 images" in warned[0]


# -- item 7: out-of-range values ------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "-0.1"),
        ("MODEL.ROI_HEADS.NMS_THRESH_TEST", "1.5"),
        ("MODEL.RPN.NMS_THRESH", "-0.7"),
        ("MODEL.RPN.POST_NMS_TOPK_TEST", "0"),
        ("MODEL.ROI_HEADS.POSITIVE_FRACTION", "1.25"),
        ("MODEL.RETINANET.FOCAL_LOSS_ALPHA", "-0.25"),
        ("MODEL.ROI_HEADS.IOU_THRESHOLDS", "[1.5]"),
        ("MODEL.RPN.IOU_THRESHOLDS", "[0.7, 0.3]"),
        ("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5, 1.6, 0.7)"),
        ("SOLVER.BASE_LR", "-0.01"),
        ("SOLVER.STEPS", "(700, 600)"),
        ("SOLVER.WARMUP_FACTOR", "2.0"),
        ("SOLVER.CHECKPOINT_PERIOD", "0"),
        ("TEST.DETECTIONS_PER_IMAGE", "0"),
        ("D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_TRAIN", "1.5"),
        ("D2ALIGN.CHECKPOINT.MIN_MATCHED_FRACTION_EVAL", "-1.0"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    cfg = build_config(os.path.join(ROOT, FASTER), [key, value])
    with pytest.raises(ValueError, match=rf"^{key.replace('.', '[.]')} = "):
        check_common_config(cfg)


def test_load_config_checks_the_common_keys():
    with pytest.raises(
        ValueError, match=r"MODEL\.ROI_HEADS\.SCORE_THRESH_TEST = -0\.1: must be in"
    ):
        load_config(os.path.join(ROOT, FASTER), ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "-0.1"])


def test_defaults_and_a_cascade_with_any_order_pass():
    cfg = build_config(
        os.path.join(ROOT, FASTER), ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5, 0.7)"]
    )
    check_common_config(cfg)  # must not raise


# -- item 8: resuming a checkpoint without "_trainer" ----------------------------------------


def _main_load_state_dict(self, state_dict):
    """detectron2 main's DefaultTrainer.load_state_dict (v0.6 has none: TrainerBase's)."""
    TrainerBase.load_state_dict(self, state_dict)
    self._trainer.load_state_dict(state_dict["_trainer"])


@pytest.mark.parametrize("detectron2_main", [False, True])
def test_resume_without_trainer_state(tiny_data, tmp_path, monkeypatch, caplog, detectron2_main):
    if detectron2_main:  # behave as detectron2 main does, whichever version is installed
        monkeypatch.setattr(DefaultTrainer, "load_state_dict", _main_load_state_dict)
    cfg = tiny_training_config(FASTER, str(tmp_path), tiny_data, max_iter=4)
    trainer = Trainer(cfg)
    trainer.iter = 2
    state = TrainerBase.state_dict(trainer)  # what detectron2 v0.6's DefaultTrainer saves
    assert "_trainer" not in state
    trainer.checkpointer.save("model_0000002", trainer=state)
    caplog.set_level(logging.WARNING, logger="d2align")

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    assert any("no optimizer state" in r.getMessage() for r in caplog.records)
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)


def test_a_test_set_of_crowd_regions_only_is_reported_as_such(tiny_data, tmp_path, caplog):
    """Every test annotation is a crowd region: COCOeval ignores them, so there is nothing to
    score. Before, the evaluator counted them as ground truth ("No predictions: every AP column
    is reported as 0" for an untrained model, NaN without a word otherwise); now the warning
    says the set holds only crowd regions and the AP columns are null with the note."""
    from detectron2.data import MetadataCatalog

    from d2align.data.datasets import register_coco_instances_checked

    meta = MetadataCatalog.get(tiny_data[1])
    data = json.loads(Path(meta.json_file).read_text())
    assert data["annotations"]
    for ann in data["annotations"]:
        ann["iscrowd"] = 1
    crowd_json = tmp_path / "crowd_val.json"
    crowd_json.write_text(json.dumps(data))
    register_coco_instances_checked("d2align_h26_crowd_val", str(crowd_json), meta.image_root)
    caplog.set_level(logging.WARNING, logger="d2align")
    main(_args((tiny_data[0], "d2align_h26_crowd_val"), tmp_path, eval_only=True))
    payload = json.loads((tmp_path / "final_results.json").read_text())
    assert payload["results"]["bbox"]["AP"] is None and payload["results"]["bbox"]["AP50"] is None
    assert "only crowd regions" in payload["notes"][0]
    warned = [r.getMessage() for r in caplog.records if "crowd regions" in r.getMessage()]
    assert warned and f"{len(data['annotations'])} annotation(s), all iscrowd 1" in warned[0]


@pytest.mark.parametrize("seed, warned", [(-1, True), (0, False), (42, False)])
def test_a_negative_seed_is_named_as_a_random_seed(tiny_data, tmp_path, caplog, seed, warned):
    """detectron2 reads SEED < 0 as "draw a random seed": the run is not repeatable. That is
    said in a warning naming the key, rather than left silent."""
    caplog.set_level(logging.WARNING, logger="d2align")
    cfg = load_config(
        os.path.join(ROOT, FASTER), _args(tiny_data, tmp_path, "SEED", str(seed)).opts
    )
    assert cfg.SEED == seed
    messages = [r.getMessage() for r in caplog.records if "SEED = " in r.getMessage()]
    assert bool(messages) == warned
    if warned:
        assert messages[0].startswith(f"SEED = {seed}: a negative seed") and "random" in messages[0]
