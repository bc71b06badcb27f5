#!/usr/bin/env bash
# The CPU study of results/cpu_study, in the order it was run: the grid experiments/grids/cpu_study.yml
# in priority order (each command skips runs that are done, so the order only decides what finishes
# first), then the tables and figures. The piwsl_tuned settings come from the Optuna search of
# results/cpu_hpo (commands in results/cpu_hpo/README.md). One training process at a time, one thread.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1
grid=experiments/grids/cpu_study.yml
for pattern in \
    'aspirin-painn-*-n100-*' \
    'ani1x_like-painn-*-n100-*' \
    'aspirin-painn-*-n1000-*' \
    'ani1x_like-painn-eo_*' \
    'ani1x_like-painn-*-n1000-*' \
    'aspirin-schnet-*-n100-*' \
    'ani1x_like-schnet-*-n100-*' \
    'aspirin-schnet-*-n1000-*' \
    'ani1x_like-schnet-*-n1000-*' \
    '*-painn-piwsl_dr001-*' \
    '*-painn-piwsl_tuned-*' \
    '*'; do
    .venv/bin/python scripts/run_experiments.py --grid "$grid" --only "$pattern" --no-progress
done
.venv/bin/python scripts/aggregate.py results/cpu_study
