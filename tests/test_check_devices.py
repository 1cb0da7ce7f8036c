"""The lint script's device check (tools/lint/check_devices.py): a tensor factory without
`device=` is found unless a comment says the CPU is meant; the library and the project packages
pass it."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "check_devices", ROOT / "tools" / "lint" / "check_devices.py"
)
check_devices = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_devices)


def test_finds_device_less_factories_and_honours_the_markers(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "import torch\n"
        "a = torch.zeros(3)\n"  # 2: found
        "b = torch.zeros(3, device=x.device)\n"
        "c = x.new_zeros(3)\n"
        "d = torch.zeros_like(x)\n"
        "e = torch.arange(\n    4, dtype=torch.float32\n)\n"  # 6: found
        "f = torch.tensor([1])  # cpu: a label table\n"
        "# cpu: the next line is a message\n"
        "g = torch.linspace(0, 1, 5)\n"
        "h = torch.as_tensor(y)\n"  # 12: found
    )
    assert list(check_devices.findings(source)) == [(2, "zeros"), (6, "arange"), (12, "as_tensor")]
    source.write_text("# cpu-module: all CPU\nimport torch\na = torch.zeros(3)\n")
    assert list(check_devices.findings(source)) == []


def test_the_library_and_the_projects_pass():
    files = list(check_devices.python_files(check_devices.default_paths()))
    assert len(files) > 40 and not any("tests" in f.relative_to(ROOT).parts for f in files)
    found = [(f, line) for f in files for line in check_devices.findings(f)]
    assert not found, found
