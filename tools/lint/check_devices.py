"""Static check: tensors created without a device in the library and the project packages.

A `torch.zeros / ones / empty / full / arange / tensor / as_tensor / linspace` call without a
`device=` argument creates a CPU tensor; next to a model on a GPU that is a device mismatch (or
a silent copy) that the CPU-only test suite never sees. Such a call is allowed where a comment
on its line, or on the line above, says why the CPU is meant: `# cpu: <why>`; a module that
works on the CPU by design says so once, on a line of its own: `# cpu-module: <why>`.
`x.new_zeros`,
`torch.zeros_like` and the like take the device of their argument and are not checked.

    python tools/lint/check_devices.py [PATH ...]   (default: shared/d2align, projects/*/<pkg>)

Exits 1 and lists `path:line: torch.NAME(...) without device=` for each finding.
"""

import ast
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "linspace"}
MARKER = "# cpu:"
MODULE_MARKER = "# cpu-module:"


def default_paths() -> List[Path]:
    """The library and every project package (tests excluded)."""
    packages = [p.parent for p in ROOT.glob("projects/*/*/__init__.py") if p.parent.name != "tests"]
    return [ROOT / "shared" / "d2align"] + sorted(packages)


def findings(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, factory name) of each unmarked device-less factory call in one file."""
    source = path.read_text()
    lines = source.splitlines()
    if any(line.startswith(MODULE_MARKER) for line in lines):
        return
    for node in ast.walk(ast.parse(source, str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        func = node.func
        if not (isinstance(func.value, ast.Name) and func.value.id == "torch"):
            continue
        if func.attr not in FACTORIES or any(k.arg == "device" for k in node.keywords):
            continue
        nearby = lines[max(0, node.lineno - 2) : node.end_lineno]
        if any(MARKER in line for line in nearby):
            continue
        yield node.lineno, func.attr


def python_files(paths) -> Iterator[Path]:
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        yield from (f for f in files if "tests" not in f.relative_to(ROOT).parts)


def main(argv=None) -> int:
    paths = [Path(p).resolve() for p in (argv if argv else [])] or default_paths()
    bad = 0
    for file in python_files(paths):
        for line, name in findings(file):
            print(f"{file.relative_to(ROOT)}:{line}: torch.{name}(...) without device= "
                  f"(add device=, or '{MARKER} <why>' if the CPU is meant)")  # fmt: skip
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
