"""Checks every record passes before it is written; errors name the file and the record."""

from __future__ import annotations

import numpy as np

from piwsl.data.structures import Structure
from piwsl.data.units import KCAL_PER_MOL_PER, energy_magnitude_bound

#: Atomic numbers of known elements.
MAX_ATOMIC_NUMBER = 118
#: Smallest cell volume (Å^3) accepted for a periodic structure.
MIN_CELL_VOLUME = 1e-6


class DataFormatError(ValueError):
    """Input data that cannot be converted; the message names the file and the record."""


def check_finite(values: np.ndarray, what: str, source: str) -> None:
    """Raise if ``values`` holds NaN or Inf."""
    if not np.all(np.isfinite(values)):
        bad = "NaN" if np.any(np.isnan(values)) else "Inf"
        raise DataFormatError(f"{source}: {what} contains {bad}")


def check_atomic_numbers(numbers: np.ndarray, source: str) -> None:
    """Raise for atomic numbers outside 1..118."""
    unknown = sorted({int(z) for z in np.asarray(numbers).reshape(-1) if not 1 <= z <= MAX_ATOMIC_NUMBER})
    if unknown:
        raise DataFormatError(f"{source}: unknown element(s), atomic numbers {unknown} are outside 1..118")


def check_structure(structure: Structure) -> None:
    """Shapes, finiteness, elements and cell of one record (labels in kcal/mol, positions in Å)."""
    source = structure.source
    numbers = structure.numbers
    if numbers.ndim != 1 or numbers.size == 0:
        raise DataFormatError(f"{source}: atomic numbers have shape {numbers.shape}, expected (N,) with N > 0")
    check_atomic_numbers(numbers, source)
    natoms = numbers.shape[0]
    if structure.positions.shape != (natoms, 3):
        raise DataFormatError(f"{source}: positions have shape {structure.positions.shape}, expected ({natoms}, 3)")
    check_finite(structure.positions, "positions", source)
    if structure.energy is None:
        raise DataFormatError(f"{source}: no energy label")
    check_finite(np.asarray(structure.energy), "energy", source)
    if structure.forces is not None:
        if structure.forces.shape != (natoms, 3):
            raise DataFormatError(f"{source}: forces have shape {structure.forces.shape}, expected ({natoms}, 3)")
        check_finite(structure.forces, "forces", source)
    if structure.cell.shape != (3, 3) or structure.pbc.shape != (3,):
        raise DataFormatError(
            f"{source}: cell {structure.cell.shape} / pbc {structure.pbc.shape}, expected (3, 3) / (3,)"
        )
    check_finite(structure.cell, "cell", source)
    if structure.pbc.any() and abs(np.linalg.det(structure.cell)) < MIN_CELL_VOLUME:
        raise DataFormatError(f"{source}: periodic (pbc={structure.pbc.tolist()}) but the cell has no volume")


def check_energy_unit(structure: Structure, source_unit: str) -> None:
    """Raise when the energy is too large in magnitude to be a total energy in ``source_unit``.

    ``structure.energy`` is already converted to kcal/mol from ``source_unit``. An energy beyond
    :func:`~piwsl.data.units.energy_magnitude_bound` means the file's unit is larger than the one
    assumed (kcal/mol or eV read as Hartree; all-electron kcal/mol read as eV). Energies too small
    for a total energy are not flagged: referenced and relative energies are legitimately small.
    """
    bound = energy_magnitude_bound(structure.numbers)
    if abs(structure.energy) > bound:
        raw = structure.energy / KCAL_PER_MOL_PER[source_unit]
        raise DataFormatError(
            f"{structure.source}: energy {raw:.8g} {source_unit} ({structure.energy:.6g} kcal/mol) for "
            f"{structure.numbers.size} atoms is {abs(structure.energy) / bound:.1f}x larger in magnitude than any "
            f"total energy of these atoms can be (|E| <= {bound:.6g} kcal/mol): the energies are probably not in "
            f"{source_unit}; convert them, or pass --skip-unit-check if they are"
        )
