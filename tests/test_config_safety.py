"""Config values that must not pass: a python tag in a YAML config (it would run code), and
non-finite numbers (1e999 in a YAML file or on the command line, NaN) are refused by every
range check, naming the key: `inf > 0` holds, and such values used to train on silently or
crash deep in a loss."""

import re

import pytest
from detectron2.modeling import build_model

from d2align.config import check_config
from d2align.engine import build_config
from d2align.projects import config_hooks_for
from d2align.testing import ROOT, tiny_rcnn_opts, tiny_retinanet_opts


def test_check_config_refuses_non_finite_numbers_whatever_the_requirement():
    for value in (
        float("inf"),
        float("-inf"),
        float("nan"),
        [1.0, float("inf")],
        ((float("nan"),),),
    ):
        with pytest.raises(ValueError, match=r"^K\.EY = .*: must be finite; must be > 0$"):
            check_config(True, "K.EY", value, "must be > 0")
    check_config(True, "K.EY", [1.0, 2.0], "fine")  # finite values pass as before
    check_config(True, "K.EY", "inf", "a string is not a number")


CASES = [  # (project config, one-stage?, key, value): the cases the hostile-user trial found
    ("projects/OffsetBin/configs/shapes/bin_expectation_hierarchical_R18_FPN_scratch.yaml",
     False, "MODEL.OFFSET_BIN.OFFSET_RANGE", "1e999"),
    ("projects/CPMRCNN/configs/shapes/cpm_rcnn_R18_FPN_scratch.yaml",
     False, "MODEL.CPM_RCNN.MAPPING_RATIOS", "[1e999, 1.5, 1.25]"),
    ("projects/DCLoss/configs/shapes/iac_dc_clnms_R18_FPN_scratch.yaml",
     True, "MODEL.DC_LOSS.DC.EPS", "1e999"),
    ("projects/MutualGuidance/configs/shapes/mutual_guidance_R18_FPN_scratch.yaml",
     True, "MODEL.MUTUAL_GUIDANCE.SIGMA", "1e999"),
    ("projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml",
     False, "MODEL.IOU_NET.JITTER.SHIFT_RANGE", "1e999"),
    ("projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml",
     False, "MODEL.IOU_NET.REFINE.STEP_SIZE", "1e999"),
    ("projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml",
     False, "MODEL.IOU_NET.REFINE.STEP_SIZE", "nan"),  # `.nan` in a YAML file
]  # fmt: skip


@pytest.mark.parametrize("config,one_stage,key,value", CASES, ids=[c[2] for c in CASES])
def test_building_the_model_refuses_an_infinite_value_naming_the_key(config, one_stage, key, value):
    path = f"{ROOT}/{config}"
    tiny = tiny_retinanet_opts() if one_stage else tiny_rcnn_opts()
    if value == "nan":  # as a YAML file's `.nan` gives it (the command line has no NaN literal)
        cfg = build_config(path, tiny + ["MODEL.DEVICE", "cpu"], config_hooks_for(path))
        node, leaf = cfg, key.split(".")
        for part in leaf[:-1]:
            node = node[part]
        node[leaf[-1]] = float("nan")
    else:
        cfg = build_config(path, tiny + ["MODEL.DEVICE", "cpu", key, value], config_hooks_for(path))
    with pytest.raises(ValueError, match="^" + re.escape(key) + " = .*must be finite"):
        build_model(cfg)


def test_a_config_with_a_python_tag_is_refused_and_runs_nothing(tmp_path):
    """`!!python/object/apply` in a config (or in its `_BASE_`) would run code under detectron2's
    default loader; it is refused naming the file and the tag, and nothing runs."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"SEED: !!python/object/apply:os.system ['touch {marker}']\n")
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{evil}"\nSOLVER:\n  MAX_ITER: 3\n')
    for path in (evil, child):
        with pytest.raises(ValueError, match="may not run code.*python/object/apply:os.system"):
            build_config(str(path))
        assert not marker.exists()
    with pytest.raises(ValueError, match=re.escape(str(evil))):
        build_config(str(child))  # the message names the file that holds the tag


def test_a_base_loop_or_a_base_that_is_not_a_mapping_names_the_files(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text('_BASE_: "b.yaml"\nSEED: 1\n')
    b.write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(
        ValueError, match=r"_BASE_ chain loops: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"
    ):
        build_config(str(a))
    b.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match=r"b\.yaml: a config file must be a YAML mapping.*list"):
        build_config(str(a))
