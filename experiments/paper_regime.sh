#!/usr/bin/env bash
# The paper-regime study (grid experiments/grids/paper_regime.yml, results in results/paper_regime),
# in priority order: each command skips finished runs and resumes killed ones, so rerunning this
# script continues where a previous session stopped. Then the tables and figures (`report`: aggregate.py
# draws the validation curves from the results, so runs of earlier sessions are drawn too).
#
# Usage: bash experiments/paper_regime.sh [painn|painn_grad|all|report]
# Two lanes, one per backbone, for two cores (one thread each; run `... painn` and `... painn_grad`
# side by side); `all` (the default) runs both lanes one after the other, then the report.
# 1. painn lane: the tuning sweep (direct-force PaiNN, N 1000 then 100, seed 0), then the choice
#    of the tuned baseline (scripts/select_tuned_baseline.py). If the grid's `baseline_tuned` is not
#    the chosen setting the lane stops (exit 3) with the line to write into the grid: edit it and
#    rerun. Then the main comparison at N 1000 seed 0, energy-only at N 1000 seed 0, N 100 seed 0,
#    seeds 1-2, and the remaining energy-only runs.
# 2. painn_grad lane: the -dE/dr model's baseline and PIWSL runs (N 1000 then 100, seed by seed)
#    and its energy-only runs after seed 0; it needs no tuned setting.
# Each equal-wall-clock run (baseline_wall) runs after the trapezoid run it takes its time from.
# For a trial on a copy of the grid (e.g. with max_steps 5), set PAPER_REGIME_GRID to the copy and
# PAPER_REGIME_OUT to a directory that gets its results/, work/ and data/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1
grid=${PAPER_REGIME_GRID:-experiments/grids/paper_regime.yml}
results=results/paper_regime
work=runs/experiments/paper_regime
directories=()
if [ -n "${PAPER_REGIME_OUT:-}" ]; then
  results=$PAPER_REGIME_OUT/results work=$PAPER_REGIME_OUT/work
  directories=(--results-dir "$results" --work-dir "$work" --data-dir "$PAPER_REGIME_OUT/data")
fi
lane=${1:-all}
run() { .venv/bin/python scripts/run_experiments.py --grid "$grid" --no-progress "${directories[@]}" "$@"; }
main() { run --study main --study main_vs_tuned "$@"; }
tuned_is_set() {
  .venv/bin/python scripts/select_tuned_baseline.py "$results" --grid "$grid"
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "stopping: the tuned baseline is not chosen or not written into $grid yet (see above)" >&2
    exit "$status"
  fi
}
# The runs of one backbone, N_train and seed, in order: the trapezoid run before the equal-wall-clock one.
main_block() { main --only "molecules-$1-*-n$2-s$3"; }

painn_lane() {
  run --study sweep --only '*-n1000-s0'
  run --study sweep --only '*-n100-s0'
  tuned_is_set
  main_block painn 1000 0
  run --study energy_only --only '*-n1000-s0'
  main_block painn 100 0
  run --study energy_only --only '*-n100-s0'
  for seed in 1 2; do main_block painn 1000 "$seed"; done
  for seed in 1 2; do main_block painn 100 "$seed"; done
  run --study energy_only
}
painn_grad_lane() {
  # the -dE/dr model runs the paper's baseline and PIWSL only: nothing waits for the tuned setting
  for seed in 0 1 2; do
    run --study main_gradient --only "molecules-painn_grad-*-n1000-s$seed"
    run --study main_gradient --only "molecules-painn_grad-*-n100-s$seed"
    [ "$seed" = 0 ] && run --study energy_only_gradient
  done
}
report() {
  .venv/bin/python scripts/aggregate.py "$results"
  .venv/bin/python scripts/select_tuned_baseline.py "$results"
}

case "$lane" in
  painn) painn_lane ;;
  painn_grad) painn_grad_lane ;;
  all) painn_lane; painn_grad_lane; report ;;
  report) report ;;
  *) echo "usage: $0 [painn|painn_grad|all|report]" >&2; exit 2 ;;
esac
