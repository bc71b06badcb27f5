#!/usr/bin/env bash
# Diagnostics of the CPU study's aspirin models (results/cpu_study/diagnostics): force rotation on
# 10 test structures of split seed 0 (all seeds of each method), the C-H bond scan against
# GFN2-xTB and NVE MD at 500 K (seed-0 models); PaiNN (force head) and, for rotation and MD, SchNet
# (gradient forces). Needs the runs of experiments/cpu_study.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1
runs=results/cpu_study/runs
out=results/cpu_study/diagnostics
methods=(Baseline=baseline NoisyNode=noisynode PIWSL=piwsl WL=weak_label)
rotation=() scan=() md=()
for entry in "${methods[@]}"; do
    label=${entry%%=*} method=${entry#*=}
    rotation+=(--model "$label=$runs/aspirin-painn-$method-n100-s*.json")
    md+=(--model "$label=$runs/aspirin-painn-$method-n100-s0.json")
done
# SchNet (forces -dE/dr, conservative by construction) as the reference for both diagnostics.
for entry in "SchNet Baseline=baseline" "SchNet PIWSL=piwsl"; do
    label=${entry%%=*} method=${entry#*=}
    rotation+=(--model "$label=$runs/aspirin-schnet-$method-n100-s*.json")
    md+=(--model "$label=$runs/aspirin-schnet-$method-n100-s0.json")
done
for method in baseline piwsl; do
    label=$([ $method = piwsl ] && echo PIWSL || echo Baseline)
    for n in 100 1000; do
        if [ -f "$runs/aspirin-painn-$method-n$n-s0.json" ]; then
            scan+=(--model "$label, N_train $n=$runs/aspirin-painn-$method-n$n-s0.json")
        fi
    done
done
.venv/bin/python scripts/diagnostics/force_rotation.py --data datasets/experiments/aspirin-n100-s0/test \
    --num-structures 10 "${rotation[@]}" --out "$out"
.venv/bin/python scripts/diagnostics/bond_scan.py "${scan[@]}" --out "$out"
.venv/bin/python scripts/diagnostics/md_stability.py --ensemble nve --temperature 500 --steps 1000 --replicas 3 \
    "${md[@]}" --out "$out"
