#!/usr/bin/env bash
# The main command of the README: sets up the environment if needed, generates the embedded
# dataset, trains and evaluates the three baselines (Faster R-CNN, RetinaNet, Cascade R-CNN,
# ResNet-18-FPN from scratch) and prints one results table. Results already in output/ are
# reused; pass --retrain to train again. Other arguments go to tools/compare.py. The three
# runs train at once, single-threaded (better use of 2 CPU cores than one run after another).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$D2ALIGN_ROOT"
"$D2ALIGN_PY" tools/generate_dataset.py
exec "$D2ALIGN_PY" tools/compare.py \
  configs/shapes/faster_rcnn_R18_FPN_scratch.yaml \
  configs/shapes/retinanet_R18_FPN_scratch.yaml \
  configs/shapes/cascade_rcnn_R18_FPN_scratch.yaml \
  --out output/shapes/baselines --jobs 3 "$@"
