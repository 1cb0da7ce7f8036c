#!/usr/bin/env bash
# Lint: isort, black and flake8 on the Python code (100 columns, settings in pyproject.toml and
# setup.cfg), clang-format on csrc/ (.clang-format), and tools/lint/check_devices.py (no tensor
# created without a device in the library and the project packages). The tools are pinned in
# requirements.txt and installed into the environment by scripts/env.sh.
#   bash scripts/lint.sh         check only; exits non-zero on any finding
#   bash scripts/lint.sh --fix   rewrite the files in place, then check
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$D2ALIGN_ROOT"
BIN="$(dirname "$D2ALIGN_PY")"
PY_PATHS=(setup.py shared tools tests benchmarks projects)
mapfile -t CPP_FILES < <(find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' | LC_ALL=C sort)
if [ "${1:-}" = "--fix" ]; then
  "$BIN/isort" -q "${PY_PATHS[@]}"
  "$BIN/black" -q "${PY_PATHS[@]}"
  "$BIN/clang-format" -i "${CPP_FILES[@]}"
fi
status=0
"$BIN/isort" --check-only -q "${PY_PATHS[@]}" || { echo "[lint] isort: imports out of order"; status=1; }
"$BIN/black" --check -q "${PY_PATHS[@]}" || { echo "[lint] black: files to reformat"; status=1; }
"$BIN/flake8" "${PY_PATHS[@]}" || status=1
"$BIN/clang-format" --dry-run -Werror "${CPP_FILES[@]}" || status=1
"$D2ALIGN_PY" tools/lint/check_devices.py || status=1
[ "$status" = 0 ] && echo "[lint] clean"
exit "$status"
