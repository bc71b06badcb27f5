"""Console commands (``pyproject.toml`` entry points) for the user-facing scripts of a repository checkout.

``piwsl-train`` is ``main.py`` (``piwsl.cli``). The others run the scripts under ``scripts/`` of the
checkout piwsl is installed from (``pip install -e .``, as ``scripts/setup_env.sh`` does), with the
same flags: ``piwsl-prepare`` (``prepare_data.py``), ``piwsl-evaluate`` (``evaluate.py``),
``piwsl-experiments`` (``run_experiments.py``), ``piwsl-aggregate`` (``aggregate.py``) and
``piwsl-curves`` (``plot_learning_curves.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run_script(name: str) -> int:
    path = SCRIPTS / f"{name}.py"
    if not path.is_file():
        print(f"error: {path} not found: this command needs piwsl installed from its repository (pip install -e .)",
              file=sys.stderr)  # fmt: skip
        return 2
    spec = importlib.util.spec_from_file_location(f"piwsl_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(sys.argv[1:])


def prepare() -> int:
    return _run_script("prepare_data")


def evaluate() -> int:
    return _run_script("evaluate")


def experiments() -> int:
    return _run_script("run_experiments")


def aggregate() -> int:
    return _run_script("aggregate")


def curves() -> int:
    return _run_script("plot_learning_curves")
