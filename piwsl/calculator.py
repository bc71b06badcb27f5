"""An ASE calculator for trained piwsl/fairchem checkpoints: MD, relaxations, scans.

``PIWSLCalculator(checkpoint)`` predicts with the checkpoint's model exactly as
``piwsl.evaluate`` does (the same graph records as the prepared LMDBs, the same denormalization),
and returns ASE units: energy in eV, forces in eV/Å. The energy is on the training data's scale:
total energies for rMD17-style data, energies less the per-element self energies where the data
were prepared with them subtracted (ANI-1x, TiO2, LMNTO); differences are unaffected.
``predict`` gives batched predictions in the training data's units for diagnostics.

Units: the model predicts in the units of its training data, which ``scripts/prepare_data.py``
stores in kcal/mol and kcal/mol/Å (the default ``energy_unit="kcal/mol"``); for a model trained
on data in eV and eV/Å pass ``energy_unit="eV"``, or ASE gets energies 23x too large.

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
from fairchem.core.datasets import data_list_collater

from piwsl.data.structures import Structure
from piwsl.data.units import KCAL_PER_MOL_PER

#: Units the training energies of a model may be in (forces: the same per Å); see ``PIWSLCalculator``.
ENERGY_UNITS = ("kcal/mol", "eV")


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
        energy_unit: unit of the model's training energies, ``"kcal/mol"`` (this repository's prepared
            data, default) or ``"eV"``; forces are in that unit per Å. ASE results are converted to eV, eV/Å.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        checkpoint: str | Path,
        cpu: bool = True,
        batch_size: int = 32,
        energy_unit: str = "kcal/mol",
        **kwargs,
    ) -> None:
        from piwsl.evaluate import load_trainer

        if energy_unit not in ENERGY_UNITS:
            raise ValueError(f"energy_unit {energy_unit!r}; allowed: {', '.join(ENERGY_UNITS)}")
        super().__init__(**kwargs)
        self.checkpoint = Path(checkpoint)
        if self.checkpoint.name == "checkpoint.pt":
            logging.warning(
                f"{self.checkpoint}: checkpoint.pt predicts with the raw training weights, not the EMA weights "
                "that were validated; use best_checkpoint.pt of the same directory"
            )
        self.energy_unit = energy_unit
        self.ev_per_unit = KCAL_PER_MOL_PER[energy_unit] / KCAL_PER_MOL_PER["eV"]
        self.trainer = load_trainer(self.checkpoint, cpu=cpu)
        self.trainer.model.eval()
        self.batch_size = batch_size
        self.collate = partial(data_list_collater, otf_graph=True)

    @property
    def direct_forces(self) -> bool:
        return bool(getattr(self.trainer._unwrapped_model, "direct_forces", False))

    def predict(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (B,) and forces (N_b, 3) per structure in the training data's units (``energy_unit``, per Å)."""
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
        energy = float(energies[0]) * self.ev_per_unit
        self.results = {"energy": energy, "free_energy": energy, "forces": forces[0] * self.ev_per_unit}
