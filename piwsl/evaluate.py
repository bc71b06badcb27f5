"""Energy and force errors of a trained checkpoint on an LMDB split, in the training data's units.

``evaluate`` predicts every structure and returns ``Errors`` (RMSE, MAE) and, on request, the
per-structure ``Predictions`` in full precision (float64; fairchem's own saved predictions are
float16). The checkpoint's training-data record (``piwsl.training_data``) supplies the units,
refuses elements the model never saw, refuses data prepared in other units or with other element
references, and warns when evaluated structures were in the training set.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import setup_imports
from fairchem.core.datasets import LmdbDataset, data_list_collater
from torch.utils.data import DataLoader
from tqdm import tqdm

import piwsl.trainer  # noqa: F401  (registers the "piwsl" trainer and piwsl's backbones)
from piwsl.checkpointing import read_checkpoint
from piwsl.dataset_checks import DatasetError, check_readable
from piwsl.training_data import OutsideTrainingDomainError, TrainingData, structure_fingerprint

#: Energy unit assumed for checkpoints written before they recorded their training data.
LEGACY_ENERGY_UNIT = "kcal/mol"


@dataclass
class Errors:
    """Errors over a data set: energies per structure, forces per component, in ``energy_unit`` (per Å)."""

    energy_rmse: float
    energy_mae: float
    forces_rmse: float | None
    forces_mae: float | None
    num_structures: int
    energy_unit: str
    in_training_set: int | None = None


@dataclass
class Predictions:
    """Per-structure predictions and labels (float64), in the training data's units.

    Energies ``(S,)``; forces ``(N, 3)`` for all atoms in order, ``natoms`` ``(S,)`` splits them;
    ``sid`` are the records' ids; ``in_training_set`` flags structures seen in training.
    """

    sid: np.ndarray
    natoms: np.ndarray
    energy: np.ndarray
    energy_label: np.ndarray
    forces: np.ndarray | None
    forces_label: np.ndarray | None
    in_training_set: np.ndarray
    energy_unit: str

    def save(self, path: Path) -> None:
        """Write ``.npz`` (all arrays) or ``.csv`` (one row per structure: energies, force RMSE), full precision."""
        path = Path(path)
        if path.suffix == ".npz":
            arrays = {key: value for key, value in asdict(self).items() if isinstance(value, np.ndarray)}
            np.savez(path, **arrays, energy_unit=np.array(self.energy_unit))
            return
        if path.suffix != ".csv":
            raise ValueError(f"{path}: predictions are written as .npz or .csv")
        force_rmse = np.full(len(self.sid), np.nan)
        if self.forces is not None and self.forces_label is not None:
            squared = np.square(self.forces - self.forces_label).sum(axis=1)
            per_structure = np.add.reduceat(squared, np.concatenate([[0], np.cumsum(self.natoms)[:-1]]))
            force_rmse = np.sqrt(per_structure / (3 * self.natoms))
        with open(path, "w") as handle:
            handle.write(f"# energies in {self.energy_unit}, forces in {self.energy_unit}/Angstrom\n")
            handle.write("sid,natoms,energy,energy_label,energy_error,forces_rmse,in_training_set\n")
            for k in range(len(self.sid)):
                error = self.energy[k] - self.energy_label[k]
                handle.write(
                    f"{self.sid[k]},{self.natoms[k]},{self.energy[k]!r},{self.energy_label[k]!r},{error!r},"
                    f"{force_rmse[k]!r},{int(self.in_training_set[k])}\n"
                )


def load_trainer(checkpoint_path: Path, cpu: bool = True):
    """A trainer in inference mode holding the checkpoint's model and normalizers.

    Its ``training_data`` attribute is the checkpoint's ``TrainingData`` record (``None`` for
    checkpoints written before piwsl recorded it).
    """
    checkpoint_path = Path(checkpoint_path)
    checkpoint = read_checkpoint(str(checkpoint_path))  # CheckpointError if missing, damaged or no checkpoint
    config = checkpoint["config"]
    trainer_name = config.get("trainer", "piwsl")
    trainer_name = "piwsl" if trainer_name in ("ocp", "forces") else trainer_name  # older checkpoints
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
    trainer.training_data = TrainingData.from_checkpoint(checkpoint)
    return trainer


def _check_data_matches_model(training_data: TrainingData | None, data_path: Path) -> None:
    """Refuse data prepared in other units or with other element references than the model's training data."""
    metadata_file = Path(data_path).parent / "metadata.json"
    if training_data is None or not metadata_file.is_file():
        return
    metadata = json.loads(metadata_file.read_text())
    if training_data.units and metadata.get("units") and metadata["units"] != training_data.units:
        raise OutsideTrainingDomainError(
            f"{metadata_file}: data in {metadata['units']} but the model was trained on {training_data.units}"
        )
    references = metadata.get("element_references")
    references = references if references and references.get("method", "none") != "none" else None
    if training_data.units and references != training_data.element_references:
        raise OutsideTrainingDomainError(
            f"{metadata_file}: energies have other element references subtracted than the model's training data "
            f"({references} vs {training_data.element_references}); prepare the data with the training set's "
            "self energies (--self-energies FILE)"
        )


def evaluate(
    trainer,
    data_path: Path,
    batch_size: int = 32,
    progress: bool = True,
    allow_unseen_elements: bool = False,
    keep_predictions: bool = False,
) -> Errors | tuple[Errors, Predictions]:
    """Predict every structure of the LMDB at ``data_path`` and compare with its labels.

    Returns ``Errors``, and with ``keep_predictions`` also the per-structure ``Predictions``.
    Elements absent from the training data are an error unless ``allow_unseen_elements``.
    """
    training_data: TrainingData | None = getattr(trainer, "training_data", None)
    _check_data_matches_model(training_data, data_path)
    unit = training_data.energy_unit if training_data and training_data.energy_unit else LEGACY_ENERGY_UNIT
    try:
        check_readable(Path(data_path))  # DatasetError for a missing or damaged split
    except DatasetError as error:
        if "already open in this process" not in str(error):
            raise
        # a dataset object of this process (e.g. a trainer's) holds the file open: it is readable
    dataset = LmdbDataset({"src": str(data_path)})
    if len(dataset) == 0:
        raise DatasetError(f"{data_path}: the split holds no structures; nothing to evaluate")
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=partial(data_list_collater, otf_graph=True)
    )
    trainer.model.eval()
    parts: dict[str, list] = {key: [] for key in ("sid", "natoms", "energy", "energy_label", "forces", "forces_label")}
    fingerprints: list[int] = []
    elements: set[int] = set()
    for batch in tqdm(loader, desc=f"evaluate {data_path}", disable=not progress):
        numbers = batch.atomic_numbers.long()
        elements.update(numbers.unique().tolist())
        if training_data is not None and not allow_unseen_elements:
            training_data.check_elements(elements, str(data_path))
        sizes = batch.natoms.tolist()
        for z, pos in zip(numbers.split(sizes), batch.pos.split(sizes), strict=True):
            fingerprints.append(structure_fingerprint(z.numpy(), pos.numpy()))
        batch = batch.to(trainer.device)
        with torch.no_grad() if getattr(trainer._unwrapped_model, "direct_forces", False) else torch.enable_grad():
            out = trainer._forward(batch)
        energy = trainer._denorm_preds("energy", out["energy"], batch).view(-1).detach()
        parts["energy"].append(energy.double().cpu().numpy())
        parts["energy_label"].append(batch.energy.view(-1).double().cpu().numpy())
        parts["natoms"].append(batch.natoms.cpu().numpy())
        sid = batch.sid.cpu().numpy() if isinstance(batch.sid, torch.Tensor) else np.asarray(batch.sid)
        parts["sid"].append(sid)
        if "forces" in batch.keys() and "forces" in out:
            forces = trainer._denorm_preds("forces", out["forces"], batch).view(-1, 3).detach()
            parts["forces"].append(forces.double().cpu().numpy())
            parts["forces_label"].append(batch.forces.view(-1, 3).double().cpu().numpy())
    if training_data is not None and allow_unseen_elements:
        training_data.check_elements(elements, str(data_path), allow_unseen=True)
    seen = (
        training_data.seen_in_training(np.asarray(fingerprints))
        if training_data is not None and len(training_data.fingerprints)
        else np.zeros(len(fingerprints), dtype=bool)
    )
    if seen.any():
        logging.warning(
            f"{data_path}: {int(seen.sum())} of {len(seen)} evaluated structures are in the model's training set "
            f"({training_data.source}); these errors are not test errors"
        )
    predictions = Predictions(
        **{key: np.concatenate(value) if value else None for key, value in parts.items()},
        in_training_set=seen,
        energy_unit=unit,
    )
    errors = _errors(predictions, None if training_data is None else int(seen.sum()))
    return (errors, predictions) if keep_predictions else errors


def _errors(predictions: Predictions, in_training_set: int | None) -> Errors:
    energy_error = predictions.energy - predictions.energy_label
    forces_rmse = forces_mae = None
    if predictions.forces is not None and predictions.forces_label is not None:
        forces_error = predictions.forces - predictions.forces_label
        forces_rmse, forces_mae = math.sqrt(float(np.mean(forces_error**2))), float(np.mean(np.abs(forces_error)))
    return Errors(
        energy_rmse=math.sqrt(float(np.mean(energy_error**2))),
        energy_mae=float(np.mean(np.abs(energy_error))),
        forces_rmse=forces_rmse,
        forces_mae=forces_mae,
        num_structures=len(energy_error),
        energy_unit=predictions.energy_unit,
        in_training_set=in_training_set,
    )


def evaluate_checkpoint(checkpoint_path: Path, data_path: Path, batch_size: int = 32) -> dict:
    return asdict(evaluate(load_trainer(checkpoint_path), data_path, batch_size))
