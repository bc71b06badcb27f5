#!/usr/bin/env bash
# The consistency-form study of results/consistency_form (grid experiments/grids/consistency_form.yml),
# in priority order: each command skips finished runs and resumes killed ones, so rerunning this
# script continues where a previous session stopped. Then the tables and figures.
#
# Usage: bash experiments/consistency_form.sh [ani1x_like|aspirin|all|report]
# The two data sets are independent lanes (own splits, own runs): on a machine with two cores run
# `... ani1x_like` and `... aspirin` side by side (one thread each); `all` (the default) runs both
# lanes one after the other, then the report. `report` only rebuilds tables and figures.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1
grid=experiments/grids/consistency_form.yml
lane=${1:-all}
run() { .venv/bin/python scripts/run_experiments.py --grid "$grid" --no-progress "$@"; }

# One data set's runs, most informative first: the form study (3 seeds), the conservative reference,
# 12,000-step runs, N_train 1000, the energy-coefficient front, energy-only (ANI-1x-like only), weights, small eSCN (aspirin only).
lane() {
  local studies=(form conservative "long --study long_conservative" form_1k conservative_1k front energy_only weights escn)
  for study in "${studies[@]}"; do
    # shellcheck disable=SC2086  # "long --study long_conservative" is two studies
    run --study $study --only "$1-*"
  done
}
report() {
  .venv/bin/python scripts/aggregate.py results/consistency_form
  .venv/bin/python scripts/consistency_form_report.py --results results/consistency_form
  # Inference cost, direct vs -dE/dr forces (same batch of 8 aspirin test structures, round-robin, 1 thread).
  local checkpoints=runs/experiments/consistency_form/checkpoints
  .venv/bin/python scripts/benchmark_inference.py --data datasets/experiments/aspirin-n100-s0/test --batch-size 8 \
      --repeats 40 --json results/consistency_form/inference_aspirin.json \
      --model "PaiNN direct, trapezoid C 10=$(echo $checkpoints/aspirin-painn-trapezoid_c10-n100-s0-*/best_checkpoint.pt)" \
      --model "PaiNN -dE/dr, baseline=$(echo $checkpoints/aspirin-painn_grad-baseline-n100-s0-*/best_checkpoint.pt)"
}

case "$lane" in
  ani1x_like | aspirin) lane "$lane" ;;
  all) lane ani1x_like; lane aspirin; report ;;
  report) report ;;
  *) echo "usage: $0 [ani1x_like|aspirin|all|report]" >&2; exit 2 ;;
esac
