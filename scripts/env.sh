# Source this file: it creates (first use) or updates the d2align environment, then exports
#   D2ALIGN_PY   the environment's python
# The environment lives outside the checkout so that repeated runs on one machine reuse it:
#   D2ALIGN_ENV  (default: $HOME/.cache/d2align/venv)
# It is refreshed when requirements.txt, the detectron2 recipe, setup.py, csrc/ or the
# checkout's location change (a stamp file records what it was built from). The compiled ops
# (d2align._C, with CUDA kernels where nvcc and a CUDA build of torch are present: the long
# part) are cached in $D2ALIGN_ENV/ext-cache/ by a hash of what they are built from (csrc/,
# setup.py, torch, nvcc, FORCE_CUDA, TORCH_CUDA_ARCH_LIST), not of the checkout's location:
# a fresh clone on the same machine reuses them; a change in csrc/ rebuilds them.
set -euo pipefail
D2ALIGN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D2ALIGN_ENV="${D2ALIGN_ENV:-$HOME/.cache/d2align/venv}"
D2ALIGN_PY="$D2ALIGN_ENV/bin/python"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"

_d2align_ext_stamp() {
  (
    cd "$D2ALIGN_ROOT"
    echo "$TORCH_PINS FORCE_CUDA=${FORCE_CUDA:-} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-}"
    cat setup.py
    find csrc -type f | LC_ALL=C sort | xargs cat
    command -v nvcc >/dev/null 2>&1 && nvcc --version || echo "no nvcc"
  ) | sha256sum | cut -d' ' -f1
}

_d2align_stamp() {
  (
    cd "$D2ALIGN_ROOT"
    echo "$D2ALIGN_ROOT $(_d2align_ext_stamp)"
    cat requirements.txt third_party/detectron2/install.py third_party/detectron2/compat.patch
    ls -d projects/*/*/__init__.py 2>/dev/null || true  # new project packages need a reinstall
  ) | sha256sum | cut -d' ' -f1
}

if [ ! -x "$D2ALIGN_PY" ]; then
  echo "[d2align] creating the environment in $D2ALIGN_ENV (first use; a few minutes)"
  python3.11 -m venv "$D2ALIGN_ENV" 2>/dev/null || python3 -m venv "$D2ALIGN_ENV"
fi
_want="$(_d2align_stamp)"
_have="$(cat "$D2ALIGN_ENV/.d2align-stamp" 2>/dev/null || true)"
if [ "$_want" != "$_have" ]; then
  echo "[d2align] installing dependencies into $D2ALIGN_ENV"
  # pip's exit status is kept; only its noise about absent local indexes is filtered.
  _pip() { "$D2ALIGN_PY" -m pip --disable-pip-version-check -q "$@" \
             2> >(grep -v "^WARNING: Location" >&2); }
  # shellcheck disable=SC2086
  _pip install $TORCH_PINS || exit 1
  _pip install -r "$D2ALIGN_ROOT/requirements.txt" || exit 1
  "$D2ALIGN_PY" "$D2ALIGN_ROOT/third_party/detectron2/install.py" || exit 1
  _ext_cache="$D2ALIGN_ENV/ext-cache/$(_d2align_ext_stamp)"
  _ext_name="$("$D2ALIGN_PY" -c "import sysconfig; print('_C' + sysconfig.get_config_var('EXT_SUFFIX'))")"
  if [ -f "$_ext_cache/$_ext_name" ]; then
    echo "[d2align] installing d2align; its C++ ops from the cache (csrc/ unchanged)"
    cp "$_ext_cache/$_ext_name" "$D2ALIGN_ROOT/shared/d2align/$_ext_name"
    (cd "$D2ALIGN_ROOT" && D2ALIGN_PREBUILT_EXT=1 "$D2ALIGN_PY" -m pip install -q --no-deps \
      --no-build-isolation -e . ) || { echo "[d2align] installing d2align failed" >&2; exit 1; }
  else
    echo "[d2align] building d2align and its C++ ops (with CUDA kernels where nvcc is present:" \
      "several minutes)"
    (cd "$D2ALIGN_ROOT" && "$D2ALIGN_PY" -m pip install -q --no-deps --no-build-isolation -e . ) \
      || { echo "[d2align] building d2align failed" >&2; exit 1; }
    mkdir -p "$_ext_cache"
    cp "$D2ALIGN_ROOT/shared/d2align/$_ext_name" "$_ext_cache/"
  fi
  "$D2ALIGN_PY" -c "import torch, d2align._C, detectron2.modeling" \
    || { echo "[d2align] the environment does not import d2align._C" >&2; exit 1; }
  "$D2ALIGN_PY" -c "import torch; from d2align.ops import compiled_with_cuda as c; print(
    '[d2align] d2align._C has CUDA kernels' if c() else '[d2align] d2align._C has no CUDA '
    'kernels (no nvcc or a CPU build of torch, or FORCE_CUDA=0): PrRoIPool and IoU-guided NMS '
    'on CUDA tensors will need a rebuild with nvcc (FORCE_CUDA=1)')"
  echo "$_want" > "$D2ALIGN_ENV/.d2align-stamp"
fi
export D2ALIGN_PY D2ALIGN_ROOT
