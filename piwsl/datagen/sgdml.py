"""Write labelled frames of one molecule as an sGDML npz, the layout of the MD17 and MD22 downloads.

Keys: ``z`` (N,) atomic numbers, ``R`` (M, N, 3) Å, ``E`` (M,) kcal/mol, ``F`` (M, N, 3) kcal/mol/Å
(left out for energy-only sets), ``name``, ``theory``, ``r_unit`` ``"Ang"``, ``e_unit`` ``"kcal/mol"``,
``type`` ``"d"`` (a data set, in sGDML's terms), plus any provenance arrays given.
``scripts/prepare_data.py sgdml`` (alias ``md17``, ``md22``) reads it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np


def write_sgdml(
    path: Path,
    numbers: np.ndarray,
    coords: np.ndarray,
    energies: np.ndarray,
    forces: np.ndarray | None,
    name: str,
    theory: str,
    **provenance: np.ndarray | str | float | int,
) -> None:
    """Write the npz ``path`` atomically (``atomic_write``).

    Args:
        numbers: (N,) atomic numbers; coords: (M, N, 3) Å; energies: (M,) kcal/mol;
        forces: (M, N, 3) kcal/mol/Å or ``None``; name, theory: the molecule and level of theory.
        provenance: extra arrays or scalars stored under their keyword (e.g. ``source_frames``).
    """
    numbers = np.asarray(numbers)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, numbers.size, 3)
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    if energies.shape[0] != coords.shape[0]:
        raise ValueError(f"{path}: {energies.shape[0]} energies for {coords.shape[0]} frames")
    arrays: dict[str, np.ndarray] = {
        "z": numbers.astype(np.uint8),
        "R": coords,
        "E": energies,
        "name": np.array(name),
        "theory": np.array(theory),
        "type": np.array("d"),
        "r_unit": np.array("Ang"),
        "e_unit": np.array("kcal/mol"),
    }
    if forces is not None:
        arrays["F"] = np.asarray(forces, dtype=np.float64).reshape(coords.shape)
    arrays |= {key: np.asarray(value) for key, value in provenance.items()}
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then rename it to ``path`` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
