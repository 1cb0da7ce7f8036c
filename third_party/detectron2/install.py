"""Install detectron2 v0.6 (pure Python) into the running interpreter's environment.

Official detectron2 is not on PyPI. This recipe takes the `pb1-detectron2==0.6` sdist, a
re-upload of the official v0.6 release (Python files identical to the `v0.6` tag), pinned by
version and sha256, applies `compat.patch` from this folder, and installs it without its C++
extension. See this folder's README.md for what the patch changes and why.

An environment that already imports a working detectron2 is left alone, unless that
detectron2 was installed by this recipe from an older patch (then it is reinstalled).

Usage: python third_party/detectron2/install.py [--force]
"""
import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
PATCH = HERE / "compat.patch"
STAMP_NAME = "_d2align_patch.txt"  # written beside the installed detectron2/__init__.py


def patch_digest() -> str:
    return hashlib.sha256(PATCH.read_bytes()).hexdigest()


def installed_state() -> str:
    """'missing', 'broken', 'ours-current', 'ours-stale' or 'foreign' (a working detectron2)."""
    if importlib.util.find_spec("detectron2") is None:
        return "missing"
    probe = (
        "import detectron2, detectron2.layers, detectron2.modeling, detectron2.evaluation, "
        "os; print(os.path.dirname(detectron2.__file__))"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if res.returncode != 0:
        return "broken"
    stamp = Path(res.stdout.strip().splitlines()[-1]) / STAMP_NAME
    if not stamp.exists():
        return "foreign"
    return "ours-current" if stamp.read_text().strip() == patch_digest() else "ours-stale"


def pip(*args: str) -> None:
    """Run pip; its stderr is shown less the notes about absent local package indexes."""
    res = subprocess.run([sys.executable, "-m", "pip", *args], stderr=subprocess.PIPE, text=True)
    noise = "WARNING: Location"
    sys.stderr.write("".join(ln for ln in res.stderr.splitlines(True) if not ln.startswith(noise)))
    if res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, res.args)


def download_sdist(dest: Path) -> Path:
    req = dest / "requirements.txt"
    req.write_text(f"{SDIST_NAME}=={SDIST_VERSION} --hash=sha256:{SDIST_SHA256}\n")
    # --no-build-isolation: the sdist's setup.py imports torch to compute its metadata.
    pip("download", "--quiet", "--no-deps", "--no-build-isolation", "-r", str(req), "-d", str(dest))
    (sdist,) = dest.glob(f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:  # pip checks too; this guards against a changed recipe
        raise RuntimeError(f"{sdist.name}: sha256 {digest} != pinned {SDIST_SHA256}")
    return sdist


def build_and_install(sdist: Path, workdir: Path) -> None:
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, filter="data")
    src = workdir / f"{SDIST_NAME}-{SDIST_VERSION}"
    subprocess.run(["patch", "-p1", "--quiet", "-i", str(PATCH)], cwd=src, check=True)
    # Dependencies come from d2align's requirements.txt, installed before this script runs.
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(src))
    probe = "import detectron2, os; print(os.path.dirname(detectron2.__file__))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    (Path(res.stdout.strip()) / STAMP_NAME).write_text(patch_digest() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if one works")
    args = parser.parse_args()

    state = installed_state()
    if state == "foreign" and not args.force:
        print("detectron2: a working detectron2 is installed; leaving it alone.")
        return
    if state == "ours-current" and not args.force:
        print("detectron2: d2align's patched v0.6 is installed and current.")
        return
    print(f"detectron2: installing patched {SDIST_NAME}=={SDIST_VERSION} (state: {state}) ...")
    with tempfile.TemporaryDirectory(prefix="d2align-detectron2-") as tmp:
        tmp = Path(tmp)
        build_and_install(download_sdist(tmp), tmp)
    if installed_state() != "ours-current":
        raise SystemExit("detectron2: install finished but `import detectron2.modeling` fails")
    print("detectron2: installed.")


if __name__ == "__main__":
    main()
