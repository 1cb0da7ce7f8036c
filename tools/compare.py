#!/usr/bin/env python
"""Side-by-side comparison of configs or of a suite: one table, a JSON copy and figures.

    python tools/compare.py --suite headline        # configs/suites/headline.yaml
    python tools/compare.py configs/shapes/*.yaml --out output/shapes/comparison \
        [--seeds 42 1 7] [--jobs 3] [--quick] [--retrain] [--opts SOLVER.MAX_ITER 100]

Trains (with the config's project's train_net.py) every run whose
`<OUTPUT_DIR>/final_results.json` is missing, resuming those with a checkpoint, `--jobs` at a
time; a failed run is reported as failed and the others go on. See `d2align.suite` and the
README ("Comparing methods").
"""

import sys
from pathlib import Path

from d2align.suite import main

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    sys.exit(main(root=ROOT))
