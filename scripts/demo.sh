#!/usr/bin/env bash
# Set up the environment if needed, then train a small PaiNN on 100 bundled aspirin structures
# with and without PIWSL and print the test errors of both (a few minutes on 2 CPU cores).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" exec .venv/bin/python scripts/demo.py "$@"
