"""Tiny real-data trainers for tests: GFN2-xTB ethanol frames, a small PaiNN, a few steps."""

from __future__ import annotations

import copy
import gc
from pathlib import Path

from fairchem.core.common.utils import load_config

from piwsl.cli import build_trainer
from piwsl.data.formats import read_rmd17
from piwsl.data.prepare import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
ETHANOL = ROOT / "tests/data/rmd17_ethanol_gfn2xtb.npz"
TINY_PAINN = {
    "name": "painn_piwsl",
    "hidden_channels": 32,
    "num_layers": 2,
    "num_rbf": 8,
    "cutoff": 4.0,
    "max_neighbors": 20,
    "regress_forces": True,
    "direct_forces": True,
    "use_pbc": True,
    "otf_graph": True,
}


def prepare_ethanol(directory: Path, energy_only: bool = False) -> Path:
    """Train 16 / val 8 / test 16 ethanol structures as LMDBs under ``directory``."""
    out = directory / ("ethanol_energy_only" if energy_only else "ethanol")
    if not out.exists():
        prepare_dataset(read_rmd17(ETHANOL), out, 16, 8, 16, 0, ETHANOL, "rmd17", train_without_forces=energy_only)
    return out


def tiny_config(data: Path, run_dir: Path, piwsl: dict, **model_overrides) -> dict:
    """The demo config with the tiny model, the given data and piwsl section, 2 epochs of batch 4."""
    config, _, _ = load_config(ROOT / "configs/demo/aspirin_painn_piwsl.yml")
    config = copy.deepcopy(config)
    config["model"] = TINY_PAINN | model_overrides
    config["piwsl"] = piwsl
    config["dataset"]["train"]["src"] = str(data / "train")
    config["dataset"]["val"]["src"] = str(data / "val")
    config["optim"].update({"batch_size": 4, "eval_batch_size": 8, "max_epochs": 2, "eval_every": 4})
    config["optim"].pop("max_steps", None)
    config.update({"run_dir": str(run_dir), "identifier": "test", "timestamp_id": "test", "seed": 0, "cpu": True})
    return config


def make_trainer(config: dict, **overrides):
    """A trainer from ``config``; collects dead trainers first (LMDB allows one open environment per file)."""
    gc.collect()
    return build_trainer(config, **overrides)


def without_training_record(checkpoint: Path, out: Path) -> Path:
    """A copy of ``checkpoint`` as piwsl wrote it before checkpoints recorded units and references."""
    import torch

    from piwsl.training_data import TRAINING_DATA_KEY

    state = torch.load(checkpoint, weights_only=False)
    state["config"].pop(TRAINING_DATA_KEY)
    torch.save(state, out)
    return out
