"""One labelled structure, in physical units, and its conversion to a fairchem graph record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data


@dataclass
class Structure:
    """A structure with its labels.

    Attributes:
        numbers: atomic numbers, (N,).
        positions: Cartesian positions in Å, (N, 3).
        energy: total energy in kcal/mol, or ``None`` when unlabelled.
        forces: forces in kcal/mol/Å, (N, 3), or ``None`` (energy-only data).
        cell: lattice vectors as rows in Å, (3, 3); zeros for molecules.
        pbc: periodicity per lattice vector, (3,).
        source: where the record came from (file and record), for error messages and provenance.
    """

    numbers: np.ndarray
    positions: np.ndarray
    energy: float | None
    forces: np.ndarray | None
    cell: np.ndarray
    pbc: np.ndarray
    source: str

    def to_data(self, index: int) -> Data:
        """The record fairchem's ``LmdbDataset`` expects (float32 tensors, as fairchem trains)."""
        natoms = len(self.numbers)
        fields = {
            "pos": torch.as_tensor(self.positions, dtype=torch.float32),
            "atomic_numbers": torch.as_tensor(self.numbers, dtype=torch.long),
            "natoms": natoms,
            "cell": torch.as_tensor(self.cell, dtype=torch.float32).view(1, 3, 3),
            "pbc": torch.as_tensor(self.pbc, dtype=torch.bool).view(1, 3),
            "fixed": torch.zeros(natoms, dtype=torch.long),
            "tags": torch.zeros(natoms, dtype=torch.long),
            "sid": index,
            "fid": index,
        }
        if self.energy is not None:
            fields["energy"] = float(self.energy)
        if self.forces is not None:
            fields["forces"] = torch.as_tensor(self.forces, dtype=torch.float32)
        return Data(**fields)


def molecule(
    numbers: np.ndarray, positions: np.ndarray, energy: float | None, forces: np.ndarray | None, source: str
) -> Structure:
    """A non-periodic structure (zero cell, no periodicity)."""
    return Structure(
        numbers=np.asarray(numbers, dtype=np.int64),
        positions=np.asarray(positions, dtype=np.float64),
        energy=energy,
        forces=None if forces is None else np.asarray(forces, dtype=np.float64),
        cell=np.zeros((3, 3)),
        pbc=np.zeros(3, dtype=bool),
        source=source,
    )
