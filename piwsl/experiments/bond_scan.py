"""Bond scans (Sec. 5.3, App. F, Fig. 2c/d): energy as one bond is stretched, models vs a reference.

Atom ``moving`` is moved along the unit vector ``u`` from atom ``anchor`` to it, every other atom
fixed, so the bond length d is the only coordinate that changes. Along the scan
``dE/dd = -F_moving · u``: a model's own forces predict the slope of its own energy curve, which
the Taylor arrows of Fig. 2c/d show (the first-order estimate ``E(d) + δ dE/dd`` of the energy at
``d + δ``). Energies are reported relative to each curve's value at the starting bond length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from piwsl.data.units import EV_TO_KCAL_PER_MOL
from piwsl.experiments.diagnostics import DiagnosticInputError

#: Energies (K,) in kcal/mol and forces (K, N, 3) in kcal/mol/Å of K structures.
Predictor = Callable[[list[Atoms]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Scan:
    """One curve: bond lengths (Å), relative energies (kcal/mol), force-implied slopes (kcal/mol/Å)."""

    distances: np.ndarray
    energies: np.ndarray
    slopes: np.ndarray


def find_bond(atoms: Atoms, anchor_element: str = "C", moving_element: str = "H", max_length: float = 1.3) -> tuple:
    """The first ``anchor_element``-``moving_element`` pair closer than ``max_length`` Å (anchor, moving)."""
    symbols = atoms.get_chemical_symbols()
    distances = atoms.get_all_distances()
    for i, a in enumerate(symbols):
        for j, b in enumerate(symbols):
            if a == anchor_element and b == moving_element and i != j and distances[i, j] < max_length:
                return i, j
    raise DiagnosticInputError(f"no {anchor_element}-{moving_element} bond shorter than {max_length} Å; pass --bond")


def stretched(atoms: Atoms, anchor: int, moving: int, distances: np.ndarray) -> tuple[list[Atoms], np.ndarray]:
    """Copies of ``atoms`` with the bond anchor-moving at each of ``distances`` (Å), and the unit vector u."""
    vector = atoms.positions[moving] - atoms.positions[anchor]
    unit = vector / np.linalg.norm(vector)
    geometries = []
    for d in distances:
        copy = atoms.copy()
        copy.positions[moving] = atoms.positions[anchor] + d * unit
        geometries.append(copy)
    return geometries, unit


def scan(predict: Predictor, atoms: Atoms, anchor: int, moving: int, distances: np.ndarray, start: float) -> Scan:
    """Energies relative to the value at bond length ``start`` and the slopes ``-F_moving · u``."""
    geometries, unit = stretched(atoms, anchor, moving, np.append(distances, start))
    energies, forces = predict(geometries)
    slopes = -np.asarray(forces)[:-1, moving] @ unit
    return Scan(distances=np.asarray(distances), energies=np.asarray(energies[:-1]) - energies[-1], slopes=slopes)


def gfn2_predictor(accuracy: float = 1.0) -> Predictor:
    """GFN2-xTB (tblite) energies and forces in kcal/mol and kcal/mol/Å: the bundled data's method."""
    from tblite.ase import TBLite

    def predict(structures: list[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        energies, forces = [], []
        for atoms in structures:
            copy = atoms.copy()
            copy.calc = TBLite(method="GFN2-xTB", accuracy=accuracy, verbosity=0)
            energies.append(copy.get_potential_energy() * EV_TO_KCAL_PER_MOL)
            forces.append(copy.get_forces() * EV_TO_KCAL_PER_MOL)
        return np.asarray(energies), np.asarray(forces)

    return predict


def relax_gfn2(atoms: Atoms, fmax: float = 0.01, steps: int = 500) -> Atoms:
    """``atoms`` relaxed with GFN2-xTB (BFGS, ``fmax`` in eV/Å), so the scan starts at a minimum."""
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    relaxed = atoms.copy()
    relaxed.calc = TBLite(method="GFN2-xTB", verbosity=0)
    BFGS(relaxed, logfile=None).run(fmax=fmax, steps=steps)
    relaxed.calc = None
    return relaxed


def scan_errors(model: Scan, reference: Scan) -> dict[str, float]:
    """RMS errors against the reference and of the model's forces against its own energy curve.

    ``energy_rmse``: relative energies vs the reference (kcal/mol); ``slope_rmse``: force-implied
    slopes vs the reference's (kcal/mol/Å); ``self_consistency``: force-implied slopes vs the
    finite-difference slope of the model's own energies (kcal/mol/Å; 0 for -dE/dr forces).
    """
    own_slope = np.gradient(model.energies, model.distances)
    return {
        "energy_rmse": float(np.sqrt(np.mean((model.energies - reference.energies) ** 2))),
        "slope_rmse": float(np.sqrt(np.mean((model.slopes - reference.slopes) ** 2))),
        "self_consistency": float(np.sqrt(np.mean((model.slopes[1:-1] - own_slope[1:-1]) ** 2))),
    }
