#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite (single-threaded, as CI does).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
