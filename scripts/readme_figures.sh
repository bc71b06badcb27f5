#!/usr/bin/env bash
# Draws the figures README.md shows: docs/parity.png (scripts/evaluate.py --plot) and
# docs/learning_curves.png (scripts/plot_learning_curves.py), from a small PaiNN trained with PIWSL
# (the demo's settings) for 300 steps on 100 bundled aspirin structures; about 2 minutes on 2 cores.
# Usage: bash scripts/readme_figures.sh [OUT_DIR]   (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=${1:-docs}
data=datasets/readme_figures
run=runs/readme_figures
export OMP_NUM_THREADS=1
if [ ! -f "$data/metadata.json" ]; then
  "$python" scripts/prepare_data.py rmd17 --src data/rmd17_aspirin_gfn2xtb_500K.npz --out "$data" \
    --train-size 100 --val-size 100 --test-size 500 --seed 0
fi
"$python" main.py --mode train --config configs/demo/aspirin_painn_piwsl.yml --cpu --run-dir "$run" \
  --identifier readme --seed 0 --optim.max_steps=300 --optim.eval_every=50 \
  --dataset.train.src="$data/train" --dataset.val.src="$data/val"
checkpoint=$(ls -t "$run"/checkpoints/readme-*/best_checkpoint.pt | head -n 1)
mkdir -p "$out"
"$python" scripts/evaluate.py --checkpoint "$checkpoint" --data "$data/test" --plot "$out/parity.png" \
  --predictions "$run/test_predictions.csv"
logs=$(dirname "$(ls -t "$run"/logs/tensorboard/readme-*/events.out.tfevents.* | head -n 1)")
"$python" scripts/plot_learning_curves.py "$logs" --out "$out/learning_curves.png" \
  --title "small PaiNN + PIWSL, aspirin (GFN2-xTB), N_train 100, 300 steps"
