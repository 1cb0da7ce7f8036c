#!/usr/bin/env bash
# The test command of the README: sets up the environment if needed, then runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k prroi`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$D2ALIGN_ROOT"
exec "$D2ALIGN_PY" -m pytest "$@"
