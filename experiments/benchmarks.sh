#!/usr/bin/env bash
# The step-time benchmark of README "Performance": every small backbone and force mode, supervised vs
# PIWSL sequential vs PIWSL batched, on 8 bundled GFN2-xTB aspirin molecules per batch; then the
# consistency_fraction / consistency_every trade-offs; then the table. Run it on an otherwise idle
# machine. THREADS (default 2) sets torch's CPU threads; a GPU, when present, is measured too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
threads=${THREADS:-2}
out=results/benchmarks
mkdir -p "$out"
bench() { .venv/bin/python scripts/benchmark_step.py --threads "$threads" --batch-size 8 --steps 20 --warmup 5 "$@"; }
bench --model schnet_small --json "$out/step_schnet_small_gradient.json"
bench --model painn_small --force-mode direct --profile 3 --json "$out/step_painn_small_direct.json"
for model in painn_small spinconv_small escn_small equiformer_v2_small; do
    [[ $model == painn_small ]] || bench --model "$model" --force-mode direct --json "$out/step_${model}_direct.json"
    bench --model "$model" --force-mode gradient --json "$out/step_${model}_gradient.json"
done
bench --model painn_small --force-mode direct --piwsl "{consistency_fraction: 0.5}" \
    --json "$out/step_painn_small_direct_consistency_fraction0.5.json"
bench --model painn_small --force-mode direct --piwsl "{consistency_every: 2}" \
    --json "$out/step_painn_small_direct_consistency_every2.json"
# One thread: where forward_mode auto runs sequentially (piwsl.trainer.PIWSLTrainer.batched_forward).
for spec in "schnet_small gradient" "painn_small direct" "painn_small gradient"; do
    read -r model mode <<< "$spec"
    .venv/bin/python scripts/benchmark_step.py --threads 1 --batch-size 8 --steps 20 --warmup 5 --model "$model" \
        --force-mode "$mode" --json "$out/step_${model}_${mode}_1thread.json"
done
# The MD22-size molecule (42 atoms, sGDML layout); not in the table, which is for aspirin.
.venv/bin/python scripts/benchmark_step.py --threads 1 --batch-size 8 --steps 20 --warmup 5 --model painn_small \
    --force-mode direct --data data/md22_ac_ala3_nhme_gfn2xtb_500K.npz --format sgdml \
    --json "$out/md22_step_painn_small_direct_1thread.json"
# The close-contact check's share of a step at 42/105/399 atoms (the all-pairs JSON was measured at d5fedf2).
.venv/bin/python scripts/benchmark_close_contacts.py --label cell-list --json "$out/close_contacts_cell_list.json"
.venv/bin/python scripts/benchmark_table.py "$out"/step_*.json --out "$out/table.md"
