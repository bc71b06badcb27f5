"""An ASE calculator for trained piwsl/fairchem checkpoints: MD, relaxations, scans.

``PIWSLCalculator(checkpoint)`` predicts with the checkpoint's model exactly as
``piwsl.evaluate`` does (the same graph records as the prepared LMDBs, the same denormalization),
and returns ASE units: energy in eV, forces in eV/Å. The checkpoint's training-data record
(``piwsl.training_data``) says what the model's numbers mean: the unit of its training energies
(converted to eV here) and the per-element self energies subtracted from them, which are added
back, so that ASE gets total energies. ``predict`` gives batched predictions on the training
data's scale (its unit, self energies not added) for diagnostics.

Inputs the model was not trained for are refused: elements absent from its training data (a
warning instead with ``allow_unseen_elements=True``) and atoms closer than ``min_distance``.

Checkpoints written before piwsl recorded its training data carry no unit: pass ``energy_unit``
(``"kcal/mol"`` for this repository's prepared data, ``"eV"``...). A given ``energy_unit`` that
contradicts the checkpoint's record is an error.

Use ``best_checkpoint.pt``: it holds the best-validation weights with the exponential moving
average (EMA) applied. ``checkpoint.pt`` holds the raw training weights (its EMA is stored
separately and not used in inference), so it predicts with other weights than were validated.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import neighbor_list
from fairchem.core.datasets import data_list_collater

from piwsl.data.structures import Structure
from piwsl.data.units import KCAL_PER_MOL_PER
from piwsl.training_data import OutsideTrainingDomainError

#: Units the training energies of a model may be in (forces: the same per Å); see ``PIWSLCalculator``.
ENERGY_UNITS = ("kcal/mol", "eV", "hartree")
#: Atoms closer than this (Å) are taken for overlapping: no training structure has such a pair.
OVERLAP_DISTANCE = 0.5


def check_no_overlaps(atoms: Atoms, min_distance: float = OVERLAP_DISTANCE) -> None:
    """Raise ``OutsideTrainingDomainError`` naming the first pair of atoms closer than ``min_distance`` (Å)."""
    if min_distance <= 0 or len(atoms) < 2:
        return
    first, second, distance = neighbor_list("ijd", atoms, min_distance)
    if len(first):
        k = int(np.argmin(distance))
        raise OutsideTrainingDomainError(
            f"atoms {first[k]} ({atoms[first[k]].symbol}) and {second[k]} ({atoms[second[k]].symbol}) are "
            f"{distance[k]:.3f} Å apart, closer than {min_distance} Å: overlapping atoms are outside any "
            "training data"
        )


def atoms_to_data(atoms: Atoms, index: int = 0):
    """The graph record of ``atoms`` as the data preparation writes it (zero cell when not periodic)."""
    periodic = bool(np.any(atoms.pbc))
    structure = Structure(
        numbers=atoms.numbers.astype(np.int64),
        positions=atoms.positions.astype(np.float64),
        energy=None,
        forces=None,
        cell=atoms.cell.array if periodic else np.zeros((3, 3)),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        source="ase",
    )
    return structure.to_data(index)


class PIWSLCalculator(Calculator):
    """ASE calculator for a checkpoint written by ``main.py``: use ``best_checkpoint.pt`` (EMA weights).

    Args:
        checkpoint: path of the checkpoint; loading a ``checkpoint.pt`` logs a warning (raw, not EMA, weights).
        cpu: run on the CPU (default) or on the GPU.
        batch_size: structures per forward pass in ``predict``.
        energy_unit: unit of the model's training energies; default: the checkpoint's record (needed for
            checkpoints without one). Forces are in that unit per Å. ASE results are converted to eV, eV/Å.
        allow_unseen_elements: predict elements absent from the training data (warning, not error).
        min_distance: atoms closer than this (Å) are an error (0: no check).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        checkpoint: str | Path,
        cpu: bool = True,
        batch_size: int = 32,
        energy_unit: str | None = None,
        allow_unseen_elements: bool = False,
        min_distance: float = OVERLAP_DISTANCE,
        **kwargs,
    ) -> None:
        from piwsl.evaluate import load_trainer

        if energy_unit is not None and energy_unit not in ENERGY_UNITS:
            raise ValueError(f"energy_unit {energy_unit!r}; allowed: {', '.join(ENERGY_UNITS)}")
        super().__init__(**kwargs)
        self.checkpoint = Path(checkpoint)
        if self.checkpoint.name == "checkpoint.pt":
            logging.warning(
                f"{self.checkpoint}: checkpoint.pt predicts with the raw training weights, not the EMA weights "
                "that were validated; use best_checkpoint.pt of the same directory"
            )
        self.trainer = load_trainer(self.checkpoint, cpu=cpu)
        self.training_data = self.trainer.training_data
        self.energy_unit = self._resolve_unit(energy_unit)
        self.ev_per_unit = KCAL_PER_MOL_PER[self.energy_unit] / KCAL_PER_MOL_PER["eV"]
        self.allow_unseen_elements = allow_unseen_elements
        self.min_distance = min_distance
        self.trainer.model.eval()
        self.batch_size = batch_size
        self.collate = partial(data_list_collater, otf_graph=True)

    def _resolve_unit(self, given: str | None) -> str:
        recorded = self.training_data.energy_unit if self.training_data is not None else None
        if recorded is not None and recorded not in ENERGY_UNITS:
            raise ValueError(
                f"{self.checkpoint}: training energies in {recorded!r}, which this calculator cannot convert"
            )
        if given is not None and recorded is not None and given != recorded:
            raise ValueError(
                f"energy_unit {given!r} contradicts {self.checkpoint}, whose training energies are in {recorded!r}"
            )
        if given is None and recorded is None:
            raise ValueError(
                f"{self.checkpoint} does not record the unit of its training energies: pass energy_unit "
                f"({', '.join(ENERGY_UNITS)}; 'kcal/mol' for data prepared by scripts/prepare_data.py)"
            )
        return given or recorded

    def _check_domain(self, atoms: Atoms) -> None:
        if self.training_data is not None:
            self.training_data.check_elements(atoms.numbers, atoms.get_chemical_formula(), self.allow_unseen_elements)
        check_no_overlaps(atoms, self.min_distance)

    @property
    def direct_forces(self) -> bool:
        return bool(getattr(self.trainer._unwrapped_model, "direct_forces", False))

    def predict(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (B,) and forces (N_b, 3) per structure in the training data's units (``energy_unit``, per Å)."""
        for atoms in structures:
            self._check_domain(atoms)
        energies, forces = [], []
        for start in range(0, len(structures), self.batch_size):
            chunk = structures[start : start + self.batch_size]
            batch = self.collate([atoms_to_data(atoms, k) for k, atoms in enumerate(chunk)]).to(self.trainer.device)
            with torch.no_grad() if self.direct_forces else torch.enable_grad():
                out = self.trainer._forward(batch)
            energy = self.trainer._denorm_preds("energy", out["energy"], batch).view(-1).detach()
            force = self.trainer._denorm_preds("forces", out["forces"], batch).view(-1, 3).detach()
            energies.append(energy.double().cpu().numpy())
            sizes = [len(atoms) for atoms in chunk]
            forces += [f.double().cpu().numpy() for f in force.split(sizes)]
        return np.concatenate(energies), forces

    def predict_positions(self, atoms: Atoms, positions: np.ndarray) -> np.ndarray:
        """Forces (K, N, 3) (``energy_unit``/Å) of ``atoms`` moved to each of ``positions`` (K, N, 3), in Å."""
        structures = []
        for geometry in positions:
            copy = atoms.copy()
            copy.positions = geometry
            structures.append(copy)
        return np.stack(self.predict(structures)[1])

    def calculate(
        self, atoms: Atoms | None = None, properties: list[str] | None = None, system_changes=all_changes
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        energies, forces = self.predict([self.atoms])
        reference = self.training_data.reference_energy(self.atoms.numbers) if self.training_data else 0.0
        total = float(energies[0]) + reference / KCAL_PER_MOL_PER[self.energy_unit]  # references are in kcal/mol
        energy = total * self.ev_per_unit
        self.results = {"energy": energy, "free_energy": energy, "forces": forces[0] * self.ev_per_unit}
