#!/usr/bin/env bash
# The main command of the README: sets up the environment if needed, generates the embedded
# dataset, then runs the `headline` suite (configs/suites/headline.yaml): each paper's full
# method next to the detectron2 detector it modifies, trained and evaluated (results already in
# output/ are reused, a stopped run resumes from its checkpoint), in one table with the
# misalignment diagnostics, written with the figures to output/suites/headline/.
#   --quick     a smoke run of the same suite in minutes (small data, 20 iterations), labelled
#               as such, into output/suites/headline_quick/
#   --retrain   train again; other arguments go to tools/compare.py (--jobs, --seeds, --out ...)
# Ctrl-C or SIGTERM stops every training; the same command continues where it stopped.
set -euo pipefail
start=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$D2ALIGN_ROOT"
quick=0
for arg in "$@"; do [ "$arg" = "--quick" ] && quick=1; done
if [ "$quick" = 0 ]; then
  "$D2ALIGN_PY" tools/generate_dataset.py  # the quick mode makes its own small data
fi
"$D2ALIGN_PY" tools/compare.py --suite headline "$@" &
pid=$!
# a background job of a script ignores SIGINT: forward Ctrl-C / SIGTERM as SIGTERM, which
# makes compare.py terminate its trainings, and wait for it to finish doing so
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM HUP
status=0
wait "$pid" || status=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || status=$?; done
elapsed=$(( $(date +%s) - start ))
printf '[main] wall time of scripts/main.sh: %d min %02d s\n' $((elapsed / 60)) $((elapsed % 60))
exit "$status"
