#!/usr/bin/env bash
# Create (or reuse) the project-local virtual environment .venv with the pinned stack and piwsl.
# Idempotent: a stamp records what was installed; rerunning after a change of pyproject.toml or
# of this script reinstalls, otherwise it returns at once. Nothing here downloads data or weights.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PIWSL_VENV:-$root/.venv}"
python="${PIWSL_PYTHON:-python3}"
stamp="$venv/.piwsl-setup"
wanted="$(cat "$root/pyproject.toml" "$root/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  exit 0
fi
echo "setting up $venv (first time: about 11 minutes, torch-scatter/torch-sparse build from source)" >&2
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "error: Python 3.11 is needed, $python is $("$python" --version)" >&2; exit 1; }
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
# torch first and exactly pinned: an unpinned torch would pull a multi-GB CUDA build.
"$venv/bin/python" -c 'import torch, sys; sys.exit(not torch.__version__.startswith("2.13.0"))' 2>/dev/null \
  || "${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e "$root[dev]"
# Source-only packages, built against the installed torch (no build isolation).
"$venv/bin/python" -c 'import torch_scatter, torch_sparse' 2>/dev/null \
  || "${pip[@]}" --no-build-isolation "torch-scatter==2.1.2" "torch-sparse==0.6.18"
echo "$wanted" > "$stamp"
