"""Checks at trainer construction for settings fairchem would accept and then mishandle.

- ``reject_ignored_section``: fairchem's own CLI (``fairchem --mode train``) builds the trainer
  from selected config sections and drops unknown top-level keys, so a top-level ``piwsl:``
  section would silently not apply (piwsl's ``main.py`` moves it to ``optim.piwsl`` first).
- ``check_graph_backend``: ``model.use_pbc: False`` makes fairchem build neighbour lists with
  torch_geometric's ``radius_graph``, which needs the ``pyg-lib`` package; without it the first
  forward fails deep inside the model.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from piwsl.config import PIWSLConfigError

#: The function of fairchem-core 1.3.0 that builds a trainer from a full config (``common/utils.py``).
_FAIRCHEM_LAUNCHER = "new_trainer_context"


def launcher_config() -> dict[str, Any] | None:
    """The full config fairchem's launcher is building this trainer from, or ``None`` when not under it."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == _FAIRCHEM_LAUNCHER and "fairchem" in frame.f_code.co_filename:
            config = frame.f_locals.get("config")
            return config if isinstance(config, dict) else None
        frame = frame.f_back
    return None


def reject_ignored_section() -> None:
    """Stop with one line when fairchem's CLI was given a top-level ``piwsl`` section it will ignore."""
    config = launcher_config()
    if config is not None and "piwsl" in config:
        raise SystemExit(
            "error: fairchem's CLI ignores the config's top-level 'piwsl' section; move it under 'optim' "
            "(optim: {piwsl: {...}}) or train with piwsl's main.py, which reads it"
        )


def check_graph_backend(model: dict[str, Any]) -> None:
    """Fail in one line when ``model.use_pbc: False`` needs torch_geometric's ``radius_graph`` and it cannot run."""
    if model.get("use_pbc", True):
        return
    from torch_geometric.nn import radius_graph

    try:
        radius_graph(torch.zeros(2, 3), r=1.0, batch=torch.zeros(2, dtype=torch.long))
    except ImportError as error:
        raise PIWSLConfigError(
            f"model.use_pbc = False needs torch_geometric's radius_graph, which cannot run here ({error}); "
            "set model.use_pbc: True with model.otf_graph: True: structures whose pbc is all False "
            "(molecules) then get ordinary non-periodic neighbour lists"
        ) from error
