"""Readers of reference-data formats; each returns ``Structure`` records in kcal/mol and Å."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from piwsl.data.structures import Structure, molecule

RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


class DataFormatError(ValueError):
    """Input data that cannot be converted; the message names the file and the record."""


def check_finite(values: np.ndarray, what: str, source: str) -> None:
    if not np.all(np.isfinite(values)):
        raise DataFormatError(f"{source}: {what} contains NaN or Inf")


def read_rmd17(path: Path) -> list[Structure]:
    """Read an rMD17 npz (``nuclear_charges``, ``coords`` Å, ``energies`` kcal/mol, ``forces`` kcal/mol/Å)."""
    path = Path(path)
    try:
        archive = np.load(path)
    except (OSError, ValueError) as error:
        raise DataFormatError(f"{path}: not a readable npz file ({error})") from error
    missing = [key for key in RMD17_KEYS if key not in archive.files]
    if missing:
        raise DataFormatError(f"{path}: missing key(s) {missing}; an rMD17 file has {list(RMD17_KEYS)}")
    numbers = np.asarray(archive["nuclear_charges"], dtype=np.int64)
    coords = np.asarray(archive["coords"], dtype=np.float64)
    energies = np.asarray(archive["energies"], dtype=np.float64).reshape(-1)
    forces = np.asarray(archive["forces"], dtype=np.float64)
    num_atoms = numbers.shape[0]
    if coords.ndim != 3 or coords.shape[1:] != (num_atoms, 3):
        raise DataFormatError(f"{path}: coords has shape {coords.shape}, expected (M, {num_atoms}, 3)")
    if forces.shape != coords.shape:
        raise DataFormatError(f"{path}: forces has shape {forces.shape}, expected {coords.shape} like coords")
    if energies.shape[0] != coords.shape[0]:
        raise DataFormatError(f"{path}: {energies.shape[0]} energies for {coords.shape[0]} geometries")
    if np.any(numbers < 1) or np.any(numbers > 118):
        raise DataFormatError(f"{path}: nuclear_charges has values outside 1..118: {sorted(set(numbers.tolist()))}")
    structures = []
    for index in range(coords.shape[0]):
        source = f"{path}[{index}]"
        for what, values in (("coords", coords[index]), ("energy", energies[index]), ("forces", forces[index])):
            check_finite(np.asarray(values), what, source)
        structures.append(molecule(numbers, coords[index], float(energies[index]), forces[index], source))
    return structures
