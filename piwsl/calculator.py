"""An ASE calculator for trained piwsl/fairchem checkpoints: MD, relaxations, scans.

``PIWSLCalculator(checkpoint)`` predicts with the checkpoint's model exactly as
``piwsl.evaluate`` does (the same graph records as the prepared LMDBs, the same denormalization),
and returns ASE units: energy in eV, forces in eV/Å. The energy is on the training data's scale:
total energies for rMD17-style data, energies less the per-element self energies where the data
were prepared with them subtracted (ANI-1x, TiO2, LMNTO); differences are unaffected.
``predict`` gives batched predictions in the data's units (kcal/mol, kcal/mol/Å) for diagnostics.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from fairchem.core.datasets import data_list_collater

from piwsl.data.structures import Structure
from piwsl.data.units import EV_TO_KCAL_PER_MOL


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
    """ASE calculator for a checkpoint written by ``main.py`` (``best_checkpoint.pt``, ``checkpoint.pt``).

    Args:
        checkpoint: path of the checkpoint.
        cpu: run on the CPU (default) or on the GPU.
        batch_size: structures per forward pass in ``predict``.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, checkpoint: str | Path, cpu: bool = True, batch_size: int = 32, **kwargs) -> None:
        from piwsl.evaluate import load_trainer

        super().__init__(**kwargs)
        self.checkpoint = Path(checkpoint)
        self.trainer = load_trainer(self.checkpoint, cpu=cpu)
        self.trainer.model.eval()
        self.batch_size = batch_size
        self.collate = partial(data_list_collater, otf_graph=True)

    @property
    def direct_forces(self) -> bool:
        return bool(getattr(self.trainer._unwrapped_model, "direct_forces", False))

    def predict(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (B,) in kcal/mol and forces (N_b, 3) per structure in kcal/mol/Å."""
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
        """Forces (K, N, 3) in kcal/mol/Å of ``atoms`` moved to each of ``positions`` (K, N, 3), in Å."""
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
        energy = float(energies[0]) / EV_TO_KCAL_PER_MOL
        self.results = {"energy": energy, "free_energy": energy, "forces": forces[0] / EV_TO_KCAL_PER_MOL}
