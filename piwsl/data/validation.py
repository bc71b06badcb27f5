"""Checks every record passes before it is written; errors name the file and the record."""

from __future__ import annotations

import numpy as np

from piwsl.data.structures import Structure
from piwsl.data.units import (
    ENERGY_FORCE_RATIO_IMPOSSIBLE,
    ENERGY_FORCE_RATIO_SUSPICIOUS,
    EV_TO_KCAL_PER_MOL,
    FORCE_RMS_IMPLAUSIBLE,
    FORCE_RMS_IMPOSSIBLE,
    FORCE_RMS_TINY,
    HARTREE_TO_KCAL_PER_MOL,
    KCAL_PER_MOL_PER,
    MIN_TOTAL_ENERGY_PER_ATOM,
    energy_magnitude_bound,
)

#: Atomic numbers of known elements.
MAX_ATOMIC_NUMBER = 118
#: Bohr radius in Å.
BOHR_IN_ANGSTROM = 0.529177
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


def check_label_magnitudes(statistics: dict, source_unit: str, referenced: bool, source: str) -> list[str]:
    """Plausibility of a split's energies and forces in the unit they were read in; return warnings.

    ``statistics`` is ``prepare.TrainStatistics.to_json()`` (kcal/mol, kcal/mol/Å, after any self
    energies were subtracted, which ``referenced`` says). Raises ``DataFormatError`` where the
    evidence is unambiguous: force RMS beyond ``FORCE_RMS_IMPOSSIBLE``, or energies that vary
    far too little for forces this large (``ENERGY_FORCE_RATIO_IMPOSSIBLE``), which a wrong energy
    unit gives; warns, showing the numbers, where a wrong unit is only likely.
    """
    warnings: list[str] = []
    skip = "convert the file, or pass --skip-unit-check if the values are right"
    factor = KCAL_PER_MOL_PER[source_unit]
    structures, atoms = statistics.get("structures") or 0, statistics.get("atoms") or 0
    force_rms, energy_std = statistics.get("force_rms"), statistics.get("energy_std")
    if force_rms is not None and force_rms > 0:
        raw = f"{force_rms / factor:.4g} {source_unit}/Å as read"
        if force_rms > FORCE_RMS_IMPOSSIBLE:
            raise DataFormatError(
                f"{source}: forces have an RMS of {force_rms:.4g} kcal/mol/Å ({raw}), beyond "
                f"{FORCE_RMS_IMPOSSIBLE:.0f} kcal/mol/Å (100 eV/Å), which no data set reaches: the forces are "
                f"probably in a smaller unit than {source_unit}/Å (kcal/mol/Å read as eV/Å would give "
                f"{force_rms / EV_TO_KCAL_PER_MOL:.4g} kcal/mol/Å); {skip}"
            )
        if force_rms > FORCE_RMS_IMPLAUSIBLE:
            warnings.append(
                f"{source}: forces have an RMS of {force_rms:.4g} kcal/mol/Å ({raw}), implausibly large "
                "(> 10 eV/Å); if the file holds kcal/mol/Å read as eV/Å, the RMS is "
                f"{force_rms / EV_TO_KCAL_PER_MOL:.4g}"
            )
        if force_rms < FORCE_RMS_TINY:
            as_hartree_per_bohr = force_rms / factor * HARTREE_TO_KCAL_PER_MOL / BOHR_IN_ANGSTROM
            warnings.append(
                f"{source}: forces have an RMS of {force_rms:.3g} kcal/mol/Å ({raw}), tiny unless the structures "
                f"are relaxed; in Hartree/Bohr they would be {as_hartree_per_bohr:.4g} kcal/mol/Å"
            )
    if force_rms and energy_std is not None and structures >= 10 and atoms > 0:
        ratio = energy_std / (force_rms * (3 * atoms / structures) ** 0.5)
        numbers = (
            f"energies vary by {energy_std:.4g} kcal/mol (std) while the forces' RMS is {force_rms:.4g} kcal/mol/Å "
            f"on {atoms / structures:.3g} atoms: std(E) / (F_rms sqrt(3N) 1 Å) = {ratio:.2g}, where MD data give "
            "about 0.01-0.1"
        )
        if ratio < ENERGY_FORCE_RATIO_IMPOSSIBLE:
            raise DataFormatError(
                f"{source}: {numbers}; the energies are probably in a larger unit than {source_unit} (Hartree: "
                f"{HARTREE_TO_KCAL_PER_MOL / factor:.4g}x) or the forces in a smaller one; {skip}"
            )
        if ratio < ENERGY_FORCE_RATIO_SUSPICIOUS:
            warnings.append(f"{source}: {numbers}; are the energies and forces in the units assumed?")
    if not referenced and source_unit == "kcal/mol" and structures and atoms:
        per_atom = abs(statistics["energy_mean"]) * structures / atoms
        if per_atom < MIN_TOTAL_ENERGY_PER_ATOM:
            warnings.append(
                f"{source}: total energies average {per_atom:.3g} kcal/mol per atom in magnitude, small for total "
                "energies (hundreds or more per atom); in Hartree they would be "
                f"{per_atom * HARTREE_TO_KCAL_PER_MOL:.4g} kcal/mol per atom"
            )
    return warnings
