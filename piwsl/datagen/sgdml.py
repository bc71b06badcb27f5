"""Write labelled frames of one molecule as an sGDML npz, the layout of the MD17 and MD22 downloads.

Keys: ``z`` (N,) atomic numbers, ``R`` (M, N, 3) Å, ``E`` (M,) kcal/mol, ``F`` (M, N, 3) kcal/mol/Å
(left out for energy-only sets), ``name``, ``theory``, ``r_unit`` ``"Ang"``, ``e_unit`` ``"kcal/mol"``,
``type`` ``"d"`` (a data set, in sGDML's terms), plus any provenance arrays given.
``scripts/prepare_data.py sgdml`` (alias ``md17``, ``md22``) reads it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from piwsl.datagen.common import atomic_write


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
    """Write the npz ``path`` atomically (``piwsl.datagen.common.atomic_write``).

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

    def write(temporary: Path) -> None:
        with temporary.open("wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def rmd17_to_sgdml(source: Path, out: Path) -> None:
    """Rewrite an rMD17 npz (``nuclear_charges``, ``coords``, ``energies``, ``forces``) as an sGDML npz.

    The molecule name is ``molecule`` (else the file's stem), the theory ``method`` (else
    ``"unknown"``); ``units`` (names of rMD17 keys) gives way to ``r_unit``/``e_unit``; every other
    array of the file (e.g. the MD settings of ``piwsl.datagen.md.generate_md``) is kept under its own key.
    """
    rmd17_keys = {"nuclear_charges", "coords", "energies", "forces", "molecule", "method", "units"}
    with np.load(source) as archive:
        arrays = {key: archive[key] for key in archive.files}
    name = str(arrays.get("molecule", source.stem))
    theory = str(arrays.get("method", "unknown"))
    provenance = {key: value for key, value in arrays.items() if key not in rmd17_keys}
    write_sgdml(
        out,
        arrays["nuclear_charges"],
        arrays["coords"],
        arrays["energies"],
        arrays.get("forces"),
        name,
        theory,
        **provenance,
    )


def generate_as_sgdml(out: Path, generate: Callable[[Path], str]) -> str:
    """Run ``generate(path)``, which writes an rMD17 npz to ``path``, and store its result at ``out`` as sGDML.

    The rMD17 file lives in a temporary directory next to ``out``; returns ``generate``'s summary with ``out``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as directory:
        rmd17 = Path(directory) / out.name
        summary = generate(rmd17)
        rmd17_to_sgdml(rmd17, out)
    return summary.replace(str(rmd17), str(out)) + " (sGDML layout)"
