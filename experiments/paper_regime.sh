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
#    of the tuned baseline (scripts/select_tuned_baseline.py); every method at N 1000 and N 100,
#    seed 0; the 3-seed comparison's seeds 1-2 (baseline, tuned baseline, trapezoid); then
#    energy-only runs the other lane has not taken, then seeds 1-2 of energy-only and of the -dE/dr
#    model, then seeds 1-2 of the Taylor form and weak labels (both lanes take these last studies;
#    each run goes to the lane that reaches it first).
#    Until the grid's `baseline_tuned` is the chosen setting, the lane skips the tuned baseline's
#    runs and ends with status 3 and the line to write into the grid: edit it and rerun (finished
#    runs are skipped).
# 2. painn_grad lane: the -dE/dr model's baseline at N 1000, its three methods at N 100, its
#    trapezoid run at N 1000, its energy-only runs, the direct model's energy-only runs, and last
#    its Taylor run at N 1000, then seeds 1-2 of the -dE/dr model, of energy-only and of the direct
#    model's Taylor form and weak labels; it needs no tuned setting.
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
python=${PAPER_REGIME_PYTHON:-.venv/bin/python}  # a stand-in for the script's own test
run() { "$python" scripts/run_experiments.py --grid "$grid" --no-progress "${directories[@]}" "$@"; }
main() { run --study main --study main_vs_tuned --study all_methods --study all_methods_vs_tuned "$@"; }
# Whether the grid's `baseline_tuned` is the setting the sweep chose (select_tuned_baseline.py's
# status: 0 yes, 2 sweep incomplete, 3 another setting won; the script says which line to write).
tuned_status=unknown
check_tuned() {
  "$python" scripts/select_tuned_baseline.py "$results" --grid "$grid"
  tuned_status=$?
}
# The runs of one backbone, N_train and seed, in order (the trapezoid run before the equal-wall-clock
# one); until the tuned setting is written into the grid, all but the tuned baseline's.
main_block() {
  if [ "$tuned_status" = 0 ]; then
    main --only "molecules-$1-*-n$2-s$3"
  else
    main --only "molecules-$1-baseline-n$2-s$3" --only "molecules-$1-trapezoid-n$2-s$3" \
      --only "molecules-$1-taylor-n$2-s$3" --only "molecules-$1-weak_label-n$2-s$3" \
      --only "molecules-$1-baseline_wall-n$2-s$3"
  fi
}

# Seeds 1-2 of the Taylor form and weak labels (both lanes, last); their baselines are main's runs.
seeds_of_other_methods() {
  run --study all_methods_seeds --only 'molecules-painn-taylor-*' --only 'molecules-painn-weak_label-*'
}

painn_lane() {
  run --study sweep --only '*-n1000-s0'
  run --study sweep --only '*-n100-s0'
  check_tuned
  main_block painn 1000 0
  main_block painn 100 0
  for seed in 1 2; do main_block painn 1000 "$seed"; done
  for seed in 1 2; do main_block painn 100 "$seed"; done
  run --study energy_only  # also in the other lane: a run one lane trains, the other skips
  run --study energy_only_seeds
  run --study main_gradient_seeds
  seeds_of_other_methods
  if [ "$tuned_status" != 0 ]; then
    echo "the tuned baseline's runs wait: write the chosen setting into $grid (see above) and rerun" >&2
    return 3
  fi
}
painn_grad_lane() {
  # the -dE/dr model runs the paper's baseline and PIWSL only: nothing waits for the tuned setting;
  # its Taylor run at N_train 1000, the dearest and least likely to help, goes last
  # (N 100 first: its runs take under an hour each, the trapezoid run at N 1000 ~2 h, which a
  # session's end must not cut)
  run --study main_gradient --only 'molecules-painn_grad-baseline-n1000-s0'
  run --study main_gradient --only 'molecules-painn_grad-*-n100-s0'
  run --study main_gradient --only 'molecules-painn_grad-trapezoid-n1000-s0'
  run --study energy_only_gradient
  run --study energy_only
  run --study main_gradient
  run --study main_gradient_seeds
  run --study energy_only_seeds
  seeds_of_other_methods
}
report() {
  "$python" scripts/aggregate.py "$results"
  "$python" scripts/select_tuned_baseline.py "$results"
  "$python" scripts/paper_regime_report.py --results "$results"
}

case "$lane" in
  painn) painn_lane ;;
  painn_grad) painn_grad_lane ;;
  all) painn_lane; status=$?; painn_grad_lane; report; exit "$status" ;;
  report) report ;;
  *) echo "usage: $0 [painn|painn_grad|all|report]" >&2; exit 2 ;;
esac
