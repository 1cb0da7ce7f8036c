"""Every script a README tells a user to run is run here, for real (issue 10).

`readme_scripts()` collects the scripts named in the top README.md and in every
projects/*/README.md (paths under tools/, benchmarks/, scripts/, projects/<Name>/, and in a
project's README the bare names of that project's scripts, e.g. `diagnose.py`), keyed by script
path so that rewording a README changes nothing. `test_every_readme_script_is_exercised` fails
when a README names a script that neither the smoke table below runs nor an explicit exemption
(with its reason) accounts for: a command documented later without a test turns CI red.

The smoke table runs each script as the README does (a separate process, this interpreter,
from the checkout's root), shrunk to a tiny dataset (8 train / 6 val images of 128 px, made
once here), 4 iterations of batch 2, and the benchmarks' smallest settings. Commands that need a
trained model (`--eval-only`, `--resume`, diagnose.py, evaluate_standalone.py,
visualize_assignments.py, `bench_iou_net.py --weights`) use the checkpoints of the trainings of
the same table. The commands run a few at a time (`JOBS`), each after the ones it needs; every
test then checks what its command printed and wrote.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Set, Tuple

import matplotlib.image
import pytest
import yaml

from d2align.data.synthetic import ShapesSpec, generate_split

ROOT = Path(__file__).resolve().parents[1]
JOBS = 3  # commands at once: each is one process with one thread, mostly starting up
TIMEOUT_S = 400  # per command

# --- what the READMEs name ----------------------------------------------------------------------

SCRIPT_PATH = re.compile(
    r"(?<![\w./-])("
    r"(?:tools|benchmarks)/[\w.-]+\.py"
    r"|projects/[A-Za-z]\w*/[\w.-]+\.py"
    r"|scripts/[\w.-]+\.sh"
    r")(?![\w/-])"
)
BARE_SCRIPT = re.compile(r"(?<![\w./-])([\w-]+\.py)(?![\w/-])")

# named by a README, run by another test or by CI itself
COVERED_ELSEWHERE = {
    "scripts/main.sh": "tests/test_suite_main.py runs `bash scripts/main.sh --quick` (the "
    "headline suite: trainings, table, figures)",
    "scripts/test.sh": "CI runs it (.ci/run is `bash scripts/test.sh`), which runs this file",
    "scripts/gpu_check.sh": "it runs tools/gpu_check.py, whose CPU side (arguments, the plan of "
    "each part, the skip without a GPU, the time budget) tests/test_gpu_check.py runs; the "
    "parts themselves need a CUDA device",
    "tools/compare.py": "tests/test_compare.py runs `tools/compare.py <configs> --out DIR` as a "
    "process (trains two configs, then reuses them), tests/test_suite_runner.py runs it on "
    "suite files, and `--suite headline` runs through scripts/main.sh in "
    "tests/test_suite_main.py; tests/test_suite_spec.py parses and plans every shipped suite",
}
# named by a README but not a command a user runs
NOT_COMMANDS = {
    "scripts/env.sh": "sourced by scripts/main.sh and scripts/test.sh, never run by itself",
    "benchmarks/paired_timing.py": "the timing module the bench_*.py scripts import",
}
# named by a README, not shipped here
NOT_IN_THIS_REPO = {
    "tools/convert-torchvision-to-d2.py": "detectron2's own tool (ImageNet weight conversion)",
}


def readmes() -> List[Path]:
    return [ROOT / "README.md"] + sorted(ROOT.glob("projects/*/README.md"))


def scripts_in(text: str, project_dir: str = "", root: Path = ROOT) -> Set[str]:
    """Scripts named in a README's text, as paths relative to `root`.

    Args:
        text: the README.
        project_dir: "projects/<Name>" for a project's README: a bare `name.py` (not part of a
            longer path) counts when `<project_dir>/name.py` exists; "" for the top README.
    """
    found = set(SCRIPT_PATH.findall(text))
    if project_dir:
        for name in BARE_SCRIPT.findall(text):
            if (root / project_dir / name).is_file():
                found.add(f"{project_dir}/{name}")
    return found


def readme_scripts() -> Dict[str, List[str]]:
    """{script path: the READMEs (relative paths) that name it}."""
    named: Dict[str, List[str]] = {}
    for readme in readmes():
        rel = readme.relative_to(ROOT)
        project_dir = str(rel.parent) if rel.parent != Path(".") else ""
        for script in scripts_in(readme.read_text(), project_dir):
            named.setdefault(script, []).append(str(rel))
    return named


# --- the smoke table ----------------------------------------------------------------------------

FASTER = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"
IOUNET = "projects/IoUNet/configs/shapes/iounet_iounms_refine_R18_FPN_scratch.yaml"
STANDALONE = "projects/IoUNet/configs/shapes/standalone_iounet_R18_FPN_scratch.yaml"
MG = "projects/MutualGuidance/configs/shapes/mutual_guidance_R18_FPN_scratch.yaml"
DC = "projects/DCLoss/configs/shapes/iac_dc_R18_FPN_scratch.yaml"
DC_CLNMS = "projects/DCLoss/configs/shapes/iac_dc_clnms_R18_FPN_scratch.yaml"
CPM = "projects/CPMRCNN/configs/shapes/cpm_rcnn_R18_FPN_scratch.yaml"
OFFSET_BIN = "projects/OffsetBin/configs/shapes/bin_expectation_hierarchical_R18_FPN_scratch.yaml"
SIZE = 128
ITERS = 4  # > detectron2's 3 timer warm-up iterations, so that train s/iter is measured
NUM_VAL = 6  # > the 5 warm-up images of d2align's inference timer
BBOX_COLUMNS = {"AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "APs", "APm", "APl"}

# overrides that point a shapes config at the tiny data, 128 px, batch 2, ITERS iterations
TINY_TRAIN = (
    "D2ALIGN.DATA.TRAIN_JSON {data}/annotations/train.json D2ALIGN.DATA.TRAIN_IMAGES {data}/train "
    f"INPUT.MIN_SIZE_TRAIN ({SIZE},) INPUT.MAX_SIZE_TRAIN {SIZE} INPUT.MIN_SIZE_TEST {SIZE} "
    f"INPUT.MAX_SIZE_TEST {SIZE} SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER {ITERS} SOLVER.STEPS () "
    "SOLVER.WARMUP_ITERS 0 DATALOADER.NUM_WORKERS 0 TEST.EVAL_PERIOD 0"
)
TINY = TINY_TRAIN + (
    " D2ALIGN.DATA.TEST_JSON {data}/annotations/val.json D2ALIGN.DATA.TEST_IMAGES {data}/val"
)
# a barely trained model scores every class below detectron2's 0.05: keep every candidate
EVERY_CANDIDATE = "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0"


@dataclass
class Command:
    """One README command, shrunk: `python <script> <args>` after the commands in `after`."""

    script: str
    args: List[str]
    after: Tuple[str, ...] = ()
    before_run: Tuple[Tuple[str, str], ...] = ()  # (copy this folder, to this one) first


def smoke_table(tmp: Path) -> Dict[str, Command]:
    """{name: command}: every README script at least once, its outputs under `tmp`.

    Arguments are written as on a command line; {tmp}, {data} (the tiny dataset), {out} (the
    runs' folders), {tiny} (TINY) and {every_candidate} are filled in per word.
    """
    places = {"tmp": tmp, "data": tmp / "data", "out": tmp / "out"}

    def words(line: str) -> List[str]:
        line = line.replace("{tiny}", TINY).replace("{every_candidate}", EVERY_CANDIDATE)
        return [word.format(**places) for word in shlex.split(line)]

    def cmd(script: str, line: str, after: Tuple[str, ...] = (), **kwargs) -> Command:
        return Command(script, words(line), after, **kwargs)

    def train(script: str, config: str, name: str) -> Command:
        """Training `name`: its run folder is {out}/<name>."""
        return cmd(script, f"--config-file {config} {{tiny}} OUTPUT_DIR {{out}}/{name}")

    def evaluate(script: str, config: str, trained: str, name: str, extra: str = "") -> Command:
        """--eval-only of training `trained`'s model_final.pth into {out}/<name>."""
        line = f"--config-file {config} --eval-only {{tiny}} {extra} OUTPUT_DIR {{out}}/{name}"
        line += f" MODEL.WEIGHTS {{out}}/{trained}/model_final.pth"
        return cmd(script, line, after=(trained,))

    bench = "--iters 1 --warmup 0 --opts {tiny}"  # the paired-timing benchmarks
    # fmt: off
    return {
        # CPM R-CNN (the slowest: first)
        "cpm": train("projects/CPMRCNN/train_net.py", CPM, "cpm"),
        "cpm_stage2": evaluate(
            "projects/CPMRCNN/train_net.py", CPM, "cpm", "cpm_stage2",
            "MODEL.CPM_RCNN.TEST_STAGE 2 MODEL.CPM_RCNN.FUSED_SCORE_GAMMA 1.0",
        ),
        "bench_cpm_rcnn": cmd("benchmarks/bench_cpm_rcnn.py", bench),
        "cpm_stage_diagnostics": cmd(
            "projects/CPMRCNN/stage_diagnostics.py",
            f"--config-file {CPM} --weights {{out}}/cpm/model_final.pth --max-images 2 "
            "--out {out}/cpm_stages {tiny} {every_candidate}",
            after=("cpm",),
        ),
        # top README
        "generate_dataset": cmd(
            "tools/generate_dataset.py", "--root {tmp}/generated --split val"
        ),
        "visualize_dataset": cmd(
            "tools/visualize_dataset.py",
            "--json {data}/annotations/train.json --image-root {data}/train --num 4 "
            "--output {tmp}/samples.png",
        ),
        "faster": train("tools/train_net.py", FASTER, "faster"),
        # --resume of a copy of the finished run, trained 2 iterations further
        "faster_resume": cmd(
            "tools/train_net.py",
            f"--config-file {FASTER} --resume {{tiny}} SOLVER.MAX_ITER {ITERS + 2} "
            "OUTPUT_DIR {out}/faster_resumed",
            after=("faster",),
            before_run=((str(tmp / "out" / "faster"), str(tmp / "out" / "faster_resumed")),),
        ),
        "faster_eval": evaluate("tools/train_net.py", FASTER, "faster", "faster_eval"),
        "bench_prroi_pool": cmd(
            "benchmarks/bench_prroi_pool.py",
            "--repeats 1 --rois 16 --channels 8 --image 64 96 --output-sizes 7 --threads 1",
        ),
        "bench_nms": cmd("benchmarks/bench_nms.py", "--sizes 300 --repeats 1 --threads 1"),
        "bench_mutual_guidance": cmd("benchmarks/bench_mutual_guidance.py", bench),
        "bench_amp": cmd("benchmarks/bench_amp.py", "--rows faster_rcnn dc_loss " + bench),
        # IoU-Net
        "iounet": train("projects/IoUNet/train_net.py", IOUNET, "iounet"),
        "iounet_eval": evaluate(  # the README's "IoU-Net" row of Table 3
            "projects/IoUNet/train_net.py", IOUNET, "iounet", "iounet_eval",
            "MODEL.IOU_NET.NMS_TYPE standard MODEL.IOU_NET.REFINE.ENABLED False",
        ),
        # no test set in its config: the standalone IoU-Net cannot detect by itself
        "standalone": cmd(
            "projects/IoUNet/train_net.py",
            f"--config-file {STANDALONE} {TINY_TRAIN} OUTPUT_DIR {{out}}/standalone",
        ),
        "evaluate_standalone": cmd(
            "projects/IoUNet/evaluate_standalone.py",
            f"--detector-config {FASTER} --detector-weights {{out}}/faster/model_final.pth "
            f"--iounet-config {STANDALONE} "
            "--iounet-weights {out}/standalone/model_final.pth --out {out}/faster+iounet "
            "--iounet-opts MODEL.IOU_NET.NMS_TYPE iou_guided MODEL.IOU_NET.REFINE.ENABLED True "
            "--detector-opts {tiny}",
            after=("faster", "standalone"),
        ),
        "diagnose": cmd(
            "projects/IoUNet/diagnose.py",
            f"--config-file {IOUNET} --weights {{out}}/iounet/model_final.pth --max-images 4 "
            "--out {out}/diagnostics {tiny} {every_candidate}",
            after=("iounet",),
        ),
        # no candidate at all (no score reaches 1): the correlations are undefined
        "diagnose_no_detections": cmd(
            "projects/IoUNet/diagnose.py",
            f"--config-file {IOUNET} --weights {{out}}/iounet/model_final.pth --max-images 1 "
            "--out {out}/diagnostics_none {tiny} MODEL.ROI_HEADS.SCORE_THRESH_TEST 1.0",
            after=("iounet",),
        ),
        "bench_iou_net": cmd(
            "benchmarks/bench_iou_net.py",
            "--weights {out}/iounet/model_final.pth --num-images 2 --warmup 0 {tiny} "
            "{every_candidate}",
            after=("iounet",),
        ),
        # Mutual Guidance
        "mg": train("projects/MutualGuidance/train_net.py", MG, "mg"),
        "mg_eval": evaluate("projects/MutualGuidance/train_net.py", MG, "mg", "mg_eval"),
        "visualize_assignments": cmd(
            "projects/MutualGuidance/visualize_assignments.py",
            f"--config-file {MG} --output {{out}}/fig4 --num-images 2 {{tiny}} "
            "MODEL.WEIGHTS {out}/mg/model_final.pth",
            after=("mg",),
        ),
        # DC Loss
        "dc": train("projects/DCLoss/train_net.py", DC, "dc"),
        "dc_clnms": evaluate("projects/DCLoss/train_net.py", DC_CLNMS, "dc", "dc_clnms"),
        "bench_dc_loss": cmd("benchmarks/bench_dc_loss.py", bench),
        # Offset Bin
        "offset_bin": train("projects/OffsetBin/train_net.py", OFFSET_BIN, "offset_bin"),
        "offset_bin_eval": evaluate(
            "projects/OffsetBin/train_net.py", OFFSET_BIN, "offset_bin", "offset_bin_eval"
        ),
        "bench_offset_bin": cmd("benchmarks/bench_offset_bin.py", bench),
    }
    # fmt: on


def smoke_scripts() -> Set[str]:
    return {command.script for command in smoke_table(Path("tmp")).values()}


# --- running the table --------------------------------------------------------------------------


@dataclass
class Result:
    command: List[str]
    returncode: int
    output: str
    seconds: float = 0.0
    skipped_because: str = ""  # the prerequisites that failed


def _start(command: Command, log: Path, env: Dict[str, str]) -> subprocess.Popen:
    for source, target in command.before_run:
        shutil.copytree(source, target)
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, command.script, *command.args],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with everything it starts
        )


def run_table(table: Dict[str, Command], logs: Path, env: Dict[str, str]) -> Dict[str, Result]:
    """Run every command (JOBS at once, each after those in its `after`); a command whose
    prerequisite failed is not run."""
    unknown = {n: c.after for n, c in table.items() if not set(c.after) <= set(table)}
    if unknown:
        raise ValueError(f"commands after commands that are not in the table: {unknown}")
    logs.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Result] = {}
    pending = list(table)
    running: Dict[str, Tuple[subprocess.Popen, float]] = {}
    try:
        while pending or running:
            for name in list(pending):
                needs = table[name].after
                failed = [n for n in needs if n in results and results[n].returncode != 0]
                cmd = [sys.executable, table[name].script, *table[name].args]
                if failed:
                    pending.remove(name)
                    results[name] = Result(cmd, -1, "", skipped_because=", ".join(failed))
                elif len(running) < JOBS and all(n in results for n in needs):
                    pending.remove(name)
                    running[name] = (_start(table[name], logs / f"{name}.txt", env), time.time())
            for name, (proc, start) in list(running.items()):
                if proc.poll() is None and time.time() - start > TIMEOUT_S:
                    os.killpg(proc.pid, 9)
                if proc.poll() is not None:
                    del running[name]
                    output = (logs / f"{name}.txt").read_text(errors="replace")
                    results[name] = Result(proc.args, proc.returncode, output, time.time() - start)
            time.sleep(0.2)
    finally:
        for proc, _ in running.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    return results


class Ran:
    """The results of the smoke table, for the tests."""

    def __init__(self, tmp: Path, results: Dict[str, Result], wall_s: float):
        self.tmp, self.out, self.results, self.wall_s = tmp, tmp / "out", results, wall_s

    def __call__(self, name: str) -> Result:
        """The result of command `name`, which must have run and exited with status 0."""
        result = self.results[name]
        command = " ".join(result.command)
        assert not result.skipped_because, f"{name} not run: {result.skipped_because} failed"
        timed_out = f" (killed after {TIMEOUT_S} s)" if result.seconds > TIMEOUT_S else ""
        assert (
            result.returncode == 0
        ), f"`{command}` exited with {result.returncode}{timed_out}:\n{result.output[-4000:]}"
        return result


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme_commands")
    spec = ShapesSpec(
        image_size=SIZE, num_train=8, num_val=NUM_VAL, object_size=(12.0, SIZE * 0.8), seed=0
    )
    for split in ("train", "val"):
        generate_split(spec, split, str(tmp / "data"), num_workers=1, progress=False)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        D2ALIGN_DATASETS=str(tmp / "datasets"),  # the embedded data would be made here
    )
    start = time.time()
    results = run_table(smoke_table(tmp), tmp / "logs", env)
    wall = time.time() - start
    print(
        f"\nREADME commands: {len(results)} in {wall:.0f} s; slowest: "
        + ", ".join(
            f"{n} {r.seconds:.0f} s"
            for n, r in sorted(results.items(), key=lambda kv: -kv[1].seconds)[:5]
        )
    )
    return Ran(tmp, results, wall)


# --- checks -------------------------------------------------------------------------------------


def _final_results(folder: Path) -> dict:
    payload = json.loads((folder / "final_results.json").read_text())
    assert BBOX_COLUMNS <= set(payload["results"]["bbox"]), payload["results"]["bbox"]
    return payload


def _check_training(ran: Ran, name: str, folder: str) -> dict:
    ran(name)
    out = ran.out / folder
    assert (out / "model_final.pth").stat().st_size > 100_000
    payload = _final_results(out)
    assert payload["speed"]["train_s_per_iter"] > 0
    assert payload["speed"]["inference_s_per_image"] > 0
    return payload


def _check_evaluation(ran: Ran, name: str, folder: str, trained: str, **keys) -> dict:
    """An --eval-only run: results without a train s/iter, from the named weights, with the
    overrides `keys` (dotted config key -> value) in the config it saved."""
    ran(name)
    out = ran.out / folder
    payload = _final_results(out)
    assert payload["speed"]["train_s_per_iter"] is None
    assert payload["speed"]["inference_s_per_image"] > 0
    assert not (out / "model_final.pth").exists()  # nothing trained
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["MODEL"]["WEIGHTS"] == str(ran.out / trained / "model_final.pth")
    for key, value in keys.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, (key, node)
    return payload


def _strict_json(path: Path):
    """The JSON of `path`; NaN or Infinity (not JSON) is an error."""

    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _ratios(output: str) -> Dict[str, Dict[str, float]]:
    """{"method / reference": {"train": r, "inference": r}} from paired_timing's ratio lines."""
    found = {}
    for pair, rest in re.findall(r"^ratio (.+?): (.*)$", output, re.M):
        found[pair] = {m: float(r) for m, r in re.findall(r"(train|inference) ([\d.]+)x", rest)}
    return found


def _png_shape(path: Path) -> Tuple[int, ...]:
    assert path.read_bytes().startswith(b"\x89PNG"), path
    return matplotlib.image.imread(path).shape


# --- the tests ----------------------------------------------------------------------------------


def test_readme_parser_keys_by_script_path(tmp_path):
    """Paths and a project's bare script names count; package modules, tests and shared code
    do not; a bare name counts only for a script of that project."""
    (tmp_path / "projects" / "Foo").mkdir(parents=True)
    (tmp_path / "projects" / "Foo" / "draw.py").write_text("")
    text = (
        "```bash\n$PY tools/train_net.py --config-file x.yaml\n"
        "OMP_NUM_THREADS=1 python benchmarks/bench_x.py --iters 2\nbash scripts/main.sh\n```\n"
        "Run `draw.py`, or `python projects/Foo/train_net.py`; see `foo/heads.py`, "
        "`shared/d2align/ops/nms.py`, `projects/Foo/tests/test_heads.py`, `test_heads.py` "
        "and `tools/compare.py`."
    )
    assert scripts_in(text, "projects/Foo", tmp_path) == {
        "tools/train_net.py",
        "benchmarks/bench_x.py",
        "scripts/main.sh",
        "projects/Foo/draw.py",
        "projects/Foo/train_net.py",
        "tools/compare.py",
    }
    assert "projects/Foo/draw.py" not in scripts_in(text, "", tmp_path)  # top README: paths only


def test_every_readme_script_is_exercised():
    named = readme_scripts()
    assert "tools/train_net.py" in named and "scripts/main.sh" in named  # the parser reads them
    exempt = {**COVERED_ELSEWHERE, **NOT_COMMANDS, **NOT_IN_THIS_REPO}
    uncovered = {s: where for s, where in named.items() if s not in smoke_scripts() | set(exempt)}
    assert not uncovered, (
        f"README commands without a test: {uncovered}; add each to smoke_table() in "
        "tests/test_readme_commands.py (or, if another test runs it, to COVERED_ELSEWHERE)"
    )
    missing = {s: where for s, where in named.items() if s not in NOT_IN_THIS_REPO}
    missing = {s: where for s, where in missing.items() if not (ROOT / s).is_file()}
    assert not missing, f"READMEs name scripts that do not exist: {missing}"
    for script in smoke_scripts() | set(COVERED_ELSEWHERE) | set(NOT_COMMANDS):
        assert (ROOT / script).is_file(), f"{script} is in the smoke table or exempt but missing"


def test_smoke_table_is_well_formed(tmp_path):
    """Every prerequisite is a command of the table, every placeholder is filled in, and a
    command that reads a training's model runs after it."""
    table = smoke_table(tmp_path)
    for name, command in table.items():
        assert set(command.after) <= set(table), name
        assert not [w for w in command.args if "{" in w or "}" in w], (name, command.args)
        for word in command.args:
            if word.endswith("model_final.pth"):
                assert Path(word).parent.name in command.after, (name, word)


@pytest.mark.slow
def test_tools_train_net_trains_resumes_and_evaluates(ran):
    _check_training(ran, "faster", "faster")
    # --resume continues the copied run from its last checkpoint (iteration ITERS) to ITERS + 2
    output = ran("faster_resume").output
    assert f"Starting training from iteration {ITERS}" in output
    metrics = [json.loads(line) for line in (ran.out / "faster_resumed" / "metrics.json").open()]
    trained = [m["iteration"] for m in metrics if "total_loss" in m]  # training iterations
    assert trained[-1] == ITERS + 1
    _final_results(ran.out / "faster_resumed")
    _check_evaluation(ran, "faster_eval", "faster_eval", "faster")
    # no command fell back to the embedded dataset (which would be generated here)
    assert not (ran.tmp / "datasets").exists()


@pytest.mark.slow
def test_tools_generate_dataset(ran):
    output = ran("generate_dataset").output
    assert re.search(r"^val: 300 images \(\d+ without objects\), \d+ objects in ", output, re.M)
    coco = json.loads((ran.tmp / "generated" / "annotations" / "val.json").read_text())
    assert len(coco["images"]) == 300
    assert [c["name"] for c in coco["categories"]] == [
        "ellipse",
        "triangle",
        "star",
        "ring",
        "crescent",
        "cross",
    ]
    first = ran.tmp / "generated" / "val" / coco["images"][0]["file_name"]
    assert matplotlib.image.imread(first).shape[:2] == (256, 256)


@pytest.mark.slow
def test_tools_visualize_dataset(ran):
    output = ran("visualize_dataset").output
    assert f"wrote {ran.tmp / 'samples.png'}" in output
    height, width, _ = _png_shape(ran.tmp / "samples.png")
    assert height >= 2 * SIZE and width >= 4 * 2 * SIZE  # one row of 4 samples, scale 2


@pytest.mark.slow
def test_iou_net_train_net_and_eval_only(ran):
    _check_training(ran, "iounet", "iounet")
    ran("standalone")  # no test set: a checkpoint, no results
    assert (ran.out / "standalone" / "model_final.pth").stat().st_size > 100_000
    _check_evaluation(
        ran,
        "iounet_eval",
        "iounet_eval",
        "iounet",
        **{"MODEL.IOU_NET.NMS_TYPE": "standard", "MODEL.IOU_NET.REFINE.ENABLED": False},
    )


@pytest.mark.slow
def test_iou_net_evaluate_standalone(ran):
    output = ran("evaluate_standalone").output
    out = ran.out / "faster+iounet"
    assert f"results written to {out / 'final_results.json'}" in output
    _final_results(out)
    args = json.loads((out / "standalone.json").read_text())
    assert args["iounet_opts"] == [
        "MODEL.IOU_NET.NMS_TYPE",
        "iou_guided",
        "MODEL.IOU_NET.REFINE.ENABLED",
        "True",
    ]


@pytest.mark.slow
def test_iou_net_diagnose(ran):
    output = ran("diagnose").output
    out = ran.out / "diagnostics"
    assert f"figures and diagnostics.json in {out}" in output
    for png in (
        "fig2a_cls_score_vs_iou.png",
        "fig2b_pred_iou_vs_iou.png",
        "fig3_positives_by_iou.png",
    ):
        assert _png_shape(out / png)[0] > 100
    summary = _strict_json(out / "diagnostics.json")
    assert summary["num_detections_iou_gt_0.5"] > 0  # every candidate kept: some overlap a GT
    for key in ("pearson_iou_vs_cls_score", "pearson_iou_vs_pred_iou"):
        assert -1.0 <= summary[key] <= 1.0
    counts = summary["positives_by_iou"]
    assert set(counts) == {"No-NMS", "NMS", "IoU-NMS"}
    for group, kept_without_nms in counts["No-NMS"].items():  # NMS only removes boxes
        assert counts["NMS"][group] <= kept_without_nms
        assert counts["IoU-NMS"][group] <= kept_without_nms


@pytest.mark.slow
def test_cpm_stage_diagnostics(ran):
    output = ran("cpm_stage_diagnostics").output
    out = ran.out / "cpm_stages"
    assert f"written to {out}" in output
    assert _png_shape(out / "stage_iou.png")[0] > 100
    summary = _strict_json(out / "stage_diagnostics.json")
    assert summary["images"] == 2 and summary["stages"] == 3
    assert len(summary["rows"]) == 5
    for row in summary["rows"]:
        low, high = row["entering_iou"]
        if row["count"]:  # the IoU entering stage 1 lies in the row's group
            assert low - 1e-4 <= row["mean_iou"][0] <= high + 1e-4
            assert len(row["mean_iou"]) == 4 and len(row["mean_peak_by_stage"]) == 3
            assert all(0.0 < p < 1.0 for p in row["mean_peak_by_stage"])
            assert all(0.0 <= f <= 1.0 for f in row["improved_by_stage"])


@pytest.mark.slow
def test_iou_net_diagnose_without_detections_writes_null_not_nan(ran):
    ran("diagnose_no_detections")
    summary = _strict_json(ran.out / "diagnostics_none" / "diagnostics.json")
    assert summary["num_detections_iou_gt_0.5"] == 0
    assert summary["pearson_iou_vs_cls_score"] is None
    assert summary["pearson_iou_vs_pred_iou"] is None


@pytest.mark.slow
def test_mutual_guidance_train_net_eval_only_and_fig4(ran):
    _check_training(ran, "mg", "mg")
    _check_evaluation(ran, "mg_eval", "mg_eval", "mg")
    output = ran("visualize_assignments").output
    pngs = sorted((ran.out / "fig4").glob("*.png"))
    assert len(pngs) == 2
    for png in pngs:
        height, width, _ = _png_shape(png)
        assert width == 2 * height  # two square panels side by side
        assert re.search(rf"{re.escape(str(png))}: positives \{{'static': \d+", output)


@pytest.mark.slow
def test_dc_loss_train_net_and_eval_only_with_cl_nms(ran):
    _check_training(ran, "dc", "dc")
    _check_evaluation(
        ran, "dc_clnms", "dc_clnms", "dc", **{"MODEL.D2ALIGN_RETINANET.NMS_TYPE": "cl_balanced"}
    )


@pytest.mark.slow
def test_cpm_rcnn_train_net_and_eval_only_of_stage_2(ran):
    _check_training(ran, "cpm", "cpm")
    _check_evaluation(
        ran,
        "cpm_stage2",
        "cpm_stage2",
        "cpm",
        **{"MODEL.CPM_RCNN.TEST_STAGE": 2, "MODEL.CPM_RCNN.FUSED_SCORE_GAMMA": 1.0},
    )


@pytest.mark.slow
def test_offset_bin_train_net_and_eval_only(ran):
    _check_training(ran, "offset_bin", "offset_bin")
    _check_evaluation(ran, "offset_bin_eval", "offset_bin_eval", "offset_bin")


@pytest.mark.slow
def test_bench_prroi_pool(ran):
    output = ran("bench_prroi_pool").output
    (row,) = re.findall(
        r"^\s*7x7\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", output, re.M
    )
    assert all(float(value) > 0 for value in row)  # ms of both, ratio, ms with box grad, ratio


@pytest.mark.slow
def test_bench_nms(ran):
    output = ran("bench_nms").output
    rows = re.findall(r"^\s*300 (.+?)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$", output, re.M)
    ops = {name.strip(): (float(ms), float(ratio), int(kept)) for name, ms, ratio, kept in rows}
    assert set(ops) == {
        "torchvision batched_nms",
        "iou_guided_nms",
        "soft_nms linear",
        "soft_nms gaussian",
        "cl_balanced_nms",
    }
    assert ops["torchvision batched_nms"][1] == 1.0
    assert all(ms > 0 and ratio >= 0 and 0 < kept <= 300 for ms, ratio, kept in ops.values())
    # CL-balanced NMS keeps one box per standard-NMS suppression group
    assert ops["cl_balanced_nms"][2] == ops["torchvision batched_nms"][2]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, pairs",
    [
        ("bench_mutual_guidance", {"mutual_guidance / static"}),
        ("bench_dc_loss", {"iac_dc / retinanet", "iac_dc_clnms / iac_dc"}),
        (
            "bench_amp",
            {"faster_rcnn bfloat16 / faster_rcnn float32", "dc_loss bfloat16 / dc_loss float32"},
        ),
        (
            "bench_cpm_rcnn",
            {f"CPM R-CNN, {n} stage(s) / Faster R-CNN" for n in (1, 2, 3)},
        ),
        (
            "bench_offset_bin",
            {
                "Offset Bin (exp. + hier.) / Faster R-CNN (regression)",
                "Cascade 2-stage + bins / Cascade 2-stage (regression)",
            },
        ),
    ],
)
def test_paired_timing_benchmarks_print_positive_ratios(ran, name, pairs):
    output = ran(name).output
    assert f"{SIZE} px, batch 2, 1 timed iterations" in output  # the overrides reached it
    ratios = _ratios(output)
    assert set(ratios) == pairs
    for pair in ratios.values():
        assert set(pair) == {"train", "inference"} and min(pair.values()) > 0


@pytest.mark.slow
def test_bench_iou_net_with_trained_weights(ran):
    output = ran("bench_iou_net").output
    assert f"weights {ran.out / 'iounet' / 'model_final.pth'}" in output
    assert "2 images" in output
    assert int(re.search(r"; (\d+) detections/image", output)[1]) > 0  # IoU-Net had work to do
    (ratio,) = re.findall(r"^ratio IoU-Net / FPN: ([\d.]+)x", output, re.M)
    fpn, iou = (
        float(re.search(rf"^\| {m} +\| ([\d.]+)", output, re.M)[1]) for m in ("FPN", "IoU-Net")
    )
    assert float(ratio) > 0 and float(ratio) == pytest.approx(iou / fpn, abs=0.02)
