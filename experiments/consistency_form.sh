#!/usr/bin/env bash
# The consistency-form study of results/consistency_form (grid experiments/grids/consistency_form.yml),
# in priority order: each command skips finished runs and resumes killed ones, so rerunning this
# script continues where a previous session stopped. Then the tables and figures.
# One training process at a time, one thread.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1
grid=experiments/grids/consistency_form.yml
run() { .venv/bin/python scripts/run_experiments.py --grid "$grid" --no-progress "$@"; }
run --study form --only 'aspirin-*-n100-s0*'
run --study conservative --only 'aspirin-*-n100-s0*'
run --study form --only 'ani1x_like-*-n100-s0*'
run --study conservative --only 'ani1x_like-*-n100-s0*'
run --study form --only 'aspirin-*-n100-*'
run --study conservative --only 'aspirin-*-n100-*'
run --study form --only 'ani1x_like-*-n100-*'
run --study conservative --only '*-n100-*'
run --study front
run --study weights
run --study form_1k
run --study conservative_1k
run --study energy_only
.venv/bin/python scripts/aggregate.py results/consistency_form
.venv/bin/python scripts/consistency_form_report.py --results results/consistency_form
# Inference cost, direct vs -dE/dr forces (same batch of 8 aspirin test structures, round-robin, 1 thread).
checkpoints=runs/experiments/consistency_form/checkpoints
.venv/bin/python scripts/benchmark_inference.py --data datasets/experiments/aspirin-n100-s0/test --batch-size 8 \
    --repeats 40 --json results/consistency_form/inference_aspirin.json \
    --model "PaiNN direct, trapezoid C 10=$(echo $checkpoints/aspirin-painn-trapezoid_c10-n100-s0-*/best_checkpoint.pt)" \
    --model "PaiNN -dE/dr, baseline=$(echo $checkpoints/aspirin-painn_grad-baseline-n100-s0-*/best_checkpoint.pt)"
