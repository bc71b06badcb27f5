"""Energy and force errors of a trained checkpoint on an LMDB split, in physical units."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import setup_imports
from fairchem.core.datasets import LmdbDataset, data_list_collater
from torch.utils.data import DataLoader
from tqdm import tqdm

import piwsl  # noqa: F401  (registers the "piwsl" trainer)
from piwsl.checkpointing import read_checkpoint
from piwsl.dataset_checks import DatasetError, check_readable


@dataclass
class Errors:
    """Errors over a data set: energies per structure (kcal/mol), forces per component (kcal/mol/Å)."""

    energy_rmse: float
    energy_mae: float
    forces_rmse: float | None
    forces_mae: float | None
    num_structures: int


def load_trainer(checkpoint_path: Path, cpu: bool = True):
    """A trainer in inference mode holding the checkpoint's model, normalizers and element references."""
    checkpoint_path = Path(checkpoint_path)
    checkpoint = read_checkpoint(str(checkpoint_path))  # CheckpointError if missing, damaged or no checkpoint
    config = checkpoint["config"]
    trainer_name = config.get("trainer", "piwsl")
    trainer_name = "piwsl" if trainer_name in ("ocp", "forces") else trainer_name
    train_dataset = dict(config["dataset"])
    train_dataset.pop("src", None)
    logging.getLogger().setLevel(logging.WARNING)
    setup_imports(config)
    trainer = registry.get_trainer_class(trainer_name)(
        task=config.get("task", {}),
        model=config["model"],
        outputs=config["outputs"],
        dataset=[train_dataset],
        optimizer=config["optim"],
        loss_functions=config["loss_functions"],
        evaluation_metrics=config["evaluation_metrics"],
        identifier="evaluate",
        local_rank=0,
        is_debug=True,
        cpu=cpu,
        logger="tensorboard",
        inference_only=True,
    )
    trainer.load_checkpoint(str(checkpoint_path), checkpoint, inference_only=True)
    return trainer


def evaluate(trainer, data_path: Path, batch_size: int = 32, progress: bool = True) -> Errors:
    """Predict every structure of the LMDB at ``data_path`` and compare with its labels."""
    if check_readable(Path(data_path)) == 0:  # DatasetError for a missing, damaged or empty split
        raise DatasetError(f"{data_path}: the split holds no structures; nothing to evaluate")
    dataset = LmdbDataset({"src": str(data_path)})
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=partial(data_list_collater, otf_graph=True)
    )
    trainer.model.eval()
    energy_sq = energy_abs = forces_sq = forces_abs = 0.0
    num_structures = num_components = 0
    for batch in tqdm(loader, desc=f"evaluate {data_path}", disable=not progress):
        batch = batch.to(trainer.device)
        with torch.no_grad() if getattr(trainer._unwrapped_model, "direct_forces", False) else torch.enable_grad():
            out = trainer._forward(batch)
        energy = trainer._denorm_preds("energy", out["energy"], batch).view(-1).detach()
        energy_error = energy.double() - batch.energy.view(-1).double()
        energy_sq += float(energy_error.square().sum())
        energy_abs += float(energy_error.abs().sum())
        num_structures += energy_error.numel()
        if "forces" in batch.keys() and "forces" in out:
            forces = trainer._denorm_preds("forces", out["forces"], batch).view(-1, 3).detach()
            forces_error = forces.double() - batch.forces.view(-1, 3).double()
            forces_sq += float(forces_error.square().sum())
            forces_abs += float(forces_error.abs().sum())
            num_components += forces_error.numel()
    return Errors(
        energy_rmse=math.sqrt(energy_sq / num_structures),
        energy_mae=energy_abs / num_structures,
        forces_rmse=math.sqrt(forces_sq / num_components) if num_components else None,
        forces_mae=forces_abs / num_components if num_components else None,
        num_structures=num_structures,
    )


def evaluate_checkpoint(checkpoint_path: Path, data_path: Path, batch_size: int = 32) -> dict:
    return asdict(evaluate(load_trainer(checkpoint_path), data_path, batch_size))
