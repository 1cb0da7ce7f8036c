"""Issue 25, without a cluster: what the SLURM jobs ask for (a suite's `launcher:` section and
the --slurm-* options), and the launch arguments each machine of a job gets."""

from pathlib import Path

import pytest

from d2align.suite.cli import parse_args, slurm_options
from d2align.suite.runs import Run
from d2align.suite.slurm import TrainingJob, _dist_port
from d2align.suite.slurm_options import SlurmOptions
from d2align.suite.spec import load_suite
from d2align.testing import ROOT

FASTER = "configs/shapes/faster_rcnn_R18_FPN_scratch.yaml"


def _suite_file(tmp_path, launcher: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nruns:\n  - config: {FASTER}\n{launcher}")
    return path


def test_a_suites_launcher_section_and_the_options_over_it(tmp_path):
    launcher = (
        "launcher:\n  partition: learnfair\n  gpus_per_run: 8\n  cpus_per_run: 80\n"
        "  time_min: 2880\n  sbatch: [--constraint=volta32gb, --exclusive]\n"
    )
    suite = load_suite(str(_suite_file(tmp_path, launcher)), Path(ROOT))
    assert suite.launcher == SlurmOptions(
        partition="learnfair",
        gpus_per_run=8,
        cpus_per_run=80,
        time_min=2880,
        sbatch=("--constraint=volta32gb", "--exclusive"),
    )
    args = parse_args(
        ["--suite", "s", "--launcher", "slurm", "--slurm-gpus-per-run", "4",
         "--slurm-sbatch=--account=vision"]
    )  # fmt: skip
    options, folder = slurm_options(args, suite, tmp_path / "out")
    assert options.gpus_per_run == 4 and options.partition == "learnfair"  # the option wins
    assert options.sbatch == ("--account=vision",)
    assert folder == tmp_path / "out" / "slurm"
    assert options.additional_parameters() == {"account": "vision"}
    assert SlurmOptions(
        sbatch=("--constraint=volta32gb", "--exclusive")
    ).additional_parameters() == {
        "constraint": "volta32gb",
        "exclusive": True,
    }


@pytest.mark.parametrize(
    "launcher, message",
    [
        ("launcher:\n  gpus: 8\n", "unknown launcher key"),
        ("launcher:\n  nodes_per_run: 0\n", "nodes_per_run must be an integer >= 1"),
        ("launcher:\n  mem_gb: .inf\n", "mem_gb must be a positive number"),
        ("launcher:\n  sbatch: [account=x]\n", "sbatch flags look like --key=value"),
        ("launcher: slurm\n", "launcher must be a mapping"),
    ],
)
def test_a_bad_launcher_section_is_refused_naming_the_key(tmp_path, launcher, message):
    with pytest.raises(ValueError, match=message):
        load_suite(str(_suite_file(tmp_path, launcher)), Path(ROOT))


def test_slurm_options_need_the_slurm_launcher(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--suite", "s", "--slurm-partition", "p"])
    assert "--slurm-partition only apply with --launcher slurm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--suite", "s", "--detach"])
    assert "--detach only apply with --launcher slurm" in capsys.readouterr().err


def test_each_machine_of_a_job_gets_detectron2s_launch_arguments(tmp_path):
    run = Run("r", Path(ROOT) / FASTER, None, ("SEED", "3"), tmp_path, max_iter=10)
    job = TrainingJob(run, "python", Path(ROOT), gpus_per_machine=8)
    assert job.launch_args(0, 1, "node1", "1234") == ["--num-gpus", "8"]
    port = _dist_port("1234")
    assert job.launch_args(1, 2, "10.0.0.5", "1234") == [
        "--num-gpus", "8", "--num-machines", "2", "--machine-rank", "1",
        "--dist-url", f"tcp://10.0.0.5:{port}",
    ]  # fmt: skip
    assert port == _dist_port("1234") and 29500 <= port < 49500
    cpu = TrainingJob(run, "python", Path(ROOT), gpus_per_machine=0)
    cmd = run.command(
        "python", Path(ROOT), resume=True, launch_args=cpu.launch_args(0, 1, "h", "7")
    )
    # the launch arguments go before the overrides (train_net's opts take the rest)
    assert cmd[-4:] == ["--num-gpus", "1", "SEED", "3"] and "--resume" in cmd
