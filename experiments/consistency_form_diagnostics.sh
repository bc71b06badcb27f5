#!/usr/bin/env bash
# Diagnostics of the consistency-form study's aspirin models (results/consistency_form/diagnostics):
# force rotation (curl) on 10 test structures of split seed 0, every seed of each setting, and NVE MD
# at 500 K (1000 steps of 0.5 fs, 3 replicas) with the seed-0 models. Direct-force PaiNN trained
# without and with each consistency form, and the -dE/dr PaiNN (conservative by construction) as
# the reference. Needs the aspirin runs of experiments/consistency_form.sh (checkpoints written before
# piwsl recorded units, hence --energy-unit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1
runs=results/consistency_form/runs
out=results/consistency_form/diagnostics
settings=("Baseline=painn-baseline" "Taylor=painn-taylor" "Trapezoid=painn-trapezoid"
          "Trapezoid C 10=painn-trapezoid_c10" "-dE/dr PaiNN=painn_grad-baseline")
rotation=() md=()
for entry in "${settings[@]}"; do
    label=${entry%%=*} run=${entry#*=}
    rotation+=(--model "$label=$runs/aspirin-$run-n100-s*.json")
    md+=(--model "$label=$runs/aspirin-$run-n100-s0.json")
done
.venv/bin/python scripts/diagnostics/force_rotation.py --data datasets/experiments/aspirin-n100-s0/test \
    --num-structures 10 --energy-unit kcal/mol "${rotation[@]}" --out "$out"
.venv/bin/python scripts/diagnostics/md_stability.py --ensemble nve --temperature 500 \
    --steps 1000 --replicas 3 --energy-unit kcal/mol "${md[@]}" --out "$out"
