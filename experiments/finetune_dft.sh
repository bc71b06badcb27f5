#!/usr/bin/env bash
# The fine-tuning study of results/finetune_dft (grid experiments/grids/finetune_dft.yml): pretrain a
# small PaiNN on GFN2-xTB energies+forces of many molecules, fine-tune it on 25-200 ωB97X/6-31G*
# ethanol energies (pretrained only / from scratch / fine-tuned / fine-tuned + PIWSL Taylor / trapezoid), test on DFT
# energies and forces. Every command skips finished runs and resumes killed ones, so rerunning this
# script continues where a previous session stopped. Then the tables and the learning-curve figure.
#
# Usage: bash experiments/finetune_dft.sh [direct|gradient|all|report]
# The direct-force and the -dE/dr-force models are independent lanes (own pretraining runs, shared
# prepared splits): on a machine with two cores run `... direct` and `... gradient` side by side (one
# thread each); `all` (the default) runs both lanes one after the other, then the report.
# Within a lane: seed 0 first (pretraining, then every method and N_train), then seeds 1 and 2, so
# that a complete first table exists early; for -dE/dr forces the trapezoid form (a check that it
# equals the fine-tuned baseline, see the grid's comments) comes last within a seed. A seed's
# fine-tuning runs are best finished in the session that pretrained it: checkpoints are not
# committed, and a later session on a fresh clone trains the pretraining run again first.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1
grid=experiments/grids/finetune_dft.yml
lane=${1:-all}
run() { .venv/bin/python scripts/run_experiments.py --grid "$grid" --no-progress "$@"; }

# N_train 200 plus 20 validation frames need 220 DFT training energies.
check_dft_set() {
  local frames
  frames=$(.venv/bin/python -c "import numpy as np; print(len(np.load('data/dft/ethanol_wb97x_631gs/train.npz')['E']))")
  if [ "${frames:-0}" -lt 220 ]; then
    echo "data/dft/ethanol_wb97x_631gs/train.npz holds ${frames:-no} energies, the study needs 220; extend it first:" >&2
    echo "  OMP_NUM_THREADS=1 .venv/bin/python scripts/generate_dft_data.py rmd17 --src data/rmd17_ethanol_gfn2xtb_500K.npz \\" >&2
    echo "      --out data/dft/ethanol_wb97x_631gs --train-frames 220 --test-frames 30 --name ethanol --extend" >&2
    exit 2
  fi
}

direct_lane() {
  for seed in 0 1 2; do
    run --study pretrain --study finetune --only "*-painn-*-s$seed"
  done
}
gradient_lane() {
  for seed in 0 1 2; do
    run --study pretrain_grad --study finetune_grad --only "*-painn_grad-pretrain-*-s$seed" \
        --only "*-painn_grad-pretrained_only-*-s$seed" --only "*-painn_grad-scratch-*-s$seed" \
        --only "*-painn_grad-ft_baseline-*-s$seed" \
        --only "*-painn_grad-ft_taylor-*-s$seed"
    run --study finetune_grad --only "*-painn_grad-ft_trapezoid-*-s$seed"
  done
}
report() {
  .venv/bin/python scripts/aggregate.py results/finetune_dft
  .venv/bin/python scripts/finetune_report.py --results results/finetune_dft
}

case "$lane" in
  direct) check_dft_set; direct_lane ;;
  gradient) check_dft_set; gradient_lane ;;
  all) check_dft_set; direct_lane; gradient_lane; report ;;
  report) report ;;
  *) echo "usage: $0 [direct|gradient|all|report]" >&2; exit 2 ;;
esac
