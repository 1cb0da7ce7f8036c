"""Suite files: the shipped suites parse and plan; mistakes are refused naming file and entry."""

from pathlib import Path

import pytest
import yaml

from d2align.suite import load_suite, plan_runs

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "configs" / "suites").glob("*.yaml"))
FASTER = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
RETINA = "configs/shapes/retinanet_R18_FPN_scratch.yaml"


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suites_parse_and_plan(path):
    suite = load_suite(path.stem, ROOT)
    assert suite.name == path.stem
    planned = plan_runs(suite, ROOT, suite.seeds)
    assert list(planned) == [e.label for e in suite.runs]
    for entry in suite.runs:
        assert len(planned[entry.label]) == max(1, len(suite.seeds))


def test_headline_pairs_each_method_with_the_baseline_it_modifies():
    suite = load_suite("headline", ROOT)
    rows = {e.label: e for e in suite.runs}
    full = rows["IoU-Net (IoU-NMS + refine)"]
    assert full.config.name == "iounet_iounms_refine_R18_FPN_scratch.yaml"
    assert full.baselines == ("Faster R-CNN",) and full.weights_from == "IoU-Net (standard NMS)"
    mg = rows["Mutual Guidance"]
    assert mg.config.name == "mutual_guidance_R18_FPN_scratch.yaml"
    assert mg.baselines == ("RetinaNet",)
    assert rows["RetinaNet"].config == (ROOT / RETINA).resolve()
    assert [s.ap for s in suite.seed_spread][0] == (19.1, 12.5)  # the README's measured spread
    # the full IoU-Net evaluates the checkpoint of the standard-NMS training, as in its table
    planned = plan_runs(suite, ROOT)
    (source,), (full_run,) = planned["IoU-Net (standard NMS)"], planned[full.label]
    assert full_run.opts[-2:] == ("MODEL.WEIGHTS", str(source.out_dir / "model_final.pth"))
    assert "--eval-only" in full_run.command("python", ROOT)


def test_readme_tables_share_runs_with_the_headline():
    """The IoU-Net Table 3 suite and the headline name the same evaluation identically, so
    what one ran the other reuses (same folder, same recorded overrides)."""
    table3 = plan_runs(load_suite("iounet_table3", ROOT), ROOT)
    headline = plan_runs(load_suite("headline", ROOT), ROOT)
    (a,), (b,) = table3["IoU-Net + IoU-NMS + Refine"], headline["IoU-Net (IoU-NMS + refine)"]
    assert a.out_dir == b.out_dir and a.stamp(ROOT) == b.stamp(ROOT)
    mg = load_suite("mutual_guidance_table1", ROOT)
    assert mg.seeds == (42, 1, 7) and mg.jobs == 4


def _suite_file(tmp_path, data) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"name": "t", "runs": [{"config": FASTER, "label": "A"}, {"config": RETINA, "label": "B"}]}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(job=2), "bad.yaml: unknown key 'job' (allowed: name, description"),
        (lambda d: d["runs"][1].update(opt=[]), "bad.yaml: runs[1] (label 'B'): unknown key 'opt'"),
        (
            lambda d: d["runs"][1].update(config="configs/shapes/nope.yaml"),
            "bad.yaml: runs[1] (label 'B'): config file 'configs/shapes/nope.yaml' not found",
        ),
        (
            lambda d: d["runs"][1].update(label="A"),
            "bad.yaml: runs[1] (label 'A'): duplicated label: runs[0] has it too",
        ),
        (
            lambda d: d["runs"][1].update(baseline="C"),
            "bad.yaml: runs[1] (label 'B'): baseline 'C' is not the label of a run",
        ),
        (
            lambda d: d["runs"][1].update(baseline=["A", "C"]),
            "bad.yaml: runs[1] (label 'B'): baseline 'C' is not the label of a run",
        ),
        (
            lambda d: d["runs"][1].update(baseline=["A", "A"]),
            "bad.yaml: runs[1] (label 'B'): baseline must not name a run twice",
        ),
        (
            lambda d: d["runs"][1].update(baseline=[]),
            "bad.yaml: runs[1] (label 'B'): baseline must be the label of another run or a list",
        ),
        (
            lambda d: d["runs"][1].update(baseline=["A", 3]),
            "bad.yaml: runs[1] (label 'B'): baseline must be the label of another run or a list",
        ),
        (
            lambda d: d["runs"][1].update(baseline=["A", "B"]),
            "bad.yaml: runs[1] (label 'B'): baseline names the run itself",
        ),
        (
            lambda d: d["runs"][0].update(opts=["SOLVER.MAX_ITER"]),
            "bad.yaml: runs[0] (label 'A'): opts must be a list of KEY, VALUE pairs",
        ),
        (lambda d: d.update(seeds=[1, 1]), "bad.yaml: seeds must not repeat a seed"),
        (lambda d: d.update(jobs=0), "bad.yaml: jobs must be an integer >= 1"),
        (lambda d: d.pop("runs"), "bad.yaml: needs 'runs'"),
        (
            lambda d: d["runs"][1].update(weights_from="B"),
            "bad.yaml: runs[1] (label 'B'): weights_from names the run itself",
        ),
        (lambda d: d.update(seeds=[1, -1]), "bad.yaml: seeds must be in [0, 2**31)"),
        (lambda d: d.update(seeds=[2**40]), "bad.yaml: seeds must be in [0, 2**31)"),
        (lambda d: d["runs"][1].update(label="B | C"), "runs[1] (label 'B | C'): label must not"),
        (lambda d: d["runs"][1].update(label="../../x"), "label must not contain ['/', '..']"),
        (lambda d: d.update(name="../../escape"), "bad.yaml: name names the output folder"),
    ],
)
def test_bad_suite_files_are_refused_naming_the_file_and_the_entry(tmp_path, change, message):
    data = {"name": BASE["name"], "runs": [dict(r) for r in BASE["runs"]]}
    change(data)
    with pytest.raises(ValueError) as refused:
        load_suite(_suite_file(tmp_path, data), ROOT)
    assert message in str(refused.value)


def test_two_runs_into_one_folder_are_refused(tmp_path):
    data = {
        "name": "t",
        "runs": [{"config": FASTER, "label": "A"}, {"config": FASTER, "label": "B"}],
    }  # both the config's dir
    suite = load_suite(_suite_file(tmp_path, data), ROOT)
    with pytest.raises(ValueError, match="runs 'A' and 'B' would both write into"):
        plan_runs(suite, ROOT)


def test_suite_by_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"no suite named 'nope'.*'headline'"):
        load_suite("nope", ROOT)


def test_a_duplicated_top_level_key_is_refused(tmp_path):
    """PyYAML keeps the last of two `runs:` keys: the first list would vanish silently."""
    path = tmp_path / "twice.yaml"
    path.write_text(f"name: t\nruns:\n  - config: {FASTER}\nruns:\n  - config: {RETINA}\n")
    with pytest.raises(
        ValueError, match="twice.yaml: cannot read the suite file.*duplicated key 'runs'"
    ):
        load_suite(path, ROOT)


def test_poll_must_be_positive():
    from d2align.suite.cli import parse_args

    for bad in ("-1", "0", "inf", "nan"):
        with pytest.raises(SystemExit):
            parse_args(["--suite", "headline", "--poll", bad])
    assert parse_args(["--suite", "headline", "--poll", "0.5"]).poll == 0.5


def test_out_that_is_a_file_is_refused(tmp_path):
    from d2align.suite.cli import main

    a_file = tmp_path / "table"
    a_file.write_text("")
    with pytest.raises(SystemExit, match=r"--out .*table: is a file, not a folder"):
        main([str(ROOT / FASTER), "--out", str(a_file)], root=ROOT)
