"""GFN-xTB energies and forces through tblite, and a finite-difference check of the forces."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version

import numpy as np
from ase import Atoms
from tblite.ase import TBLite


def tblite_version() -> str:
    """Return the installed tblite version string."""
    return version("tblite")


def label(atoms: Atoms, method: str) -> tuple[float, np.ndarray]:
    """Return the xTB energy (eV) and forces (eV/Angstrom) of ``atoms``.

    A fresh calculator is used on every call, so each SCF starts from scratch
    and the labels do not depend on the order in which structures are computed.
    Raises ``ase.calculators.calculator.CalculationFailed`` when the SCF fails.
    """
    atoms = atoms.copy()
    atoms.calc = TBLite(method=method, verbosity=0)
    return float(atoms.get_potential_energy()), atoms.get_forces().copy()


def finite_difference_error(
    atoms: Atoms,
    forces: np.ndarray,
    method: str,
    components: Sequence[tuple[int, int]],
    step: float = 1e-3,
) -> float:
    """Return max |F_stored - F_fd| (eV/Angstrom) over Cartesian components.

    ``forces`` are the stored forces of ``atoms`` in eV/Angstrom.
    ``components`` lists (atom index, axis) pairs; each is displaced by
    +/- ``step`` Angstrom and the force is the central difference of the energy.
    """
    errors = []
    for atom, axis in components:
        energies = []
        for sign in (1.0, -1.0):
            displaced = atoms.copy()
            displaced.positions[atom, axis] += sign * step
            energies.append(label(displaced, method)[0])
        fd_force = -(energies[0] - energies[1]) / (2.0 * step)
        errors.append(abs(fd_force - forces[atom, axis]))
    return float(max(errors))


def all_components(natoms: int) -> list[tuple[int, int]]:
    """Return every (atom index, axis) pair of a structure with ``natoms`` atoms."""
    return [(atom, axis) for atom in range(natoms) for axis in range(3)]
