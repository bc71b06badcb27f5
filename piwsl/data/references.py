"""Per-element self energies (element references), in kcal/mol: fitted, given, or none.

The prepared energy of a structure is ``E_total - sum_i e(Z_i)`` (App. B: ANI-1x energies have
per-element self energies subtracted). ``fit_self_energies`` solves the least-squares problem
``min_e sum_s (E_s - sum_Z n_sZ e_Z)^2`` over the training split, streaming: it accumulates the
normal equations (one small matrix per data set), and takes the minimum-norm solution when the
compositions do not determine every element (TiO2: every structure is Ti_n O_2n).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers as SYMBOL_TO_NUMBER
from ase.data import chemical_symbols

from piwsl.data.validation import MAX_ATOMIC_NUMBER, DataFormatError

#: Singular values of the normal matrix below this fraction of the largest count as zero.
RANK_TOLERANCE = 1e-10


@dataclass(frozen=True)
class SelfEnergies:
    """Self energy per atomic number (kcal/mol) and how they were obtained."""

    energies: dict[int, float] = field(default_factory=dict)
    method: str = "none"
    rank: int | None = None

    def total(self, numbers: np.ndarray, source: str) -> float:
        """Sum of the self energies of ``numbers``; an element without one is an error."""
        if self.method == "none":
            return 0.0
        missing = sorted({int(z) for z in numbers} - self.energies.keys())
        if missing:
            raise DataFormatError(
                f"{source}: no self energy for element(s) {[chemical_symbols[z] for z in missing]} "
                f"({'they do not occur in the training split' if self.method == 'fit' else 'not in the given file'}); "
                "pass --self-energies FILE with every element"
            )
        return float(sum(self.energies[int(z)] for z in numbers))

    def to_json(self) -> dict:
        """The ``element_references`` block of ``metadata.json``."""
        return {
            "method": self.method,
            "unit": "kcal/mol",
            "energies": {chemical_symbols[z]: value for z, value in sorted(self.energies.items())},
            "rank": self.rank,
        }


def fit_self_energies(compositions: Iterable[tuple[np.ndarray, float]]) -> SelfEnergies:
    """Least-squares self energies (kcal/mol) from ``(atomic numbers, total energy in kcal/mol)`` pairs."""
    normal = np.zeros((MAX_ATOMIC_NUMBER + 1, MAX_ATOMIC_NUMBER + 1))
    rhs = np.zeros(MAX_ATOMIC_NUMBER + 1)
    for numbers, energy in compositions:
        counts = np.bincount(numbers, minlength=MAX_ATOMIC_NUMBER + 1).astype(np.float64)
        normal += np.outer(counts, counts)
        rhs += counts * energy
    present = np.flatnonzero(np.diag(normal))
    if present.size == 0:
        raise ValueError("cannot fit self energies: the training split is empty")
    sub = normal[np.ix_(present, present)]
    solution, _, rank, _ = np.linalg.lstsq(sub, rhs[present], rcond=RANK_TOLERANCE)
    return SelfEnergies({int(z): float(e) for z, e in zip(present, solution, strict=True)}, "fit", int(rank))


def load_self_energies(path: Path, kcal_per_mol_per_unit: float) -> SelfEnergies:
    """Self energies from a JSON object ``{"H": -0.6, "C": -38.1, ...}`` (symbols or atomic numbers).

    Values are in the source file's energy unit (Ha for ANI-1x, eV for XSF/ASE, kcal/mol for rMD17)
    and are converted with ``kcal_per_mol_per_unit``.
    """
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataFormatError(f"{path}: not a readable JSON file of self energies ({error})") from error
    if not isinstance(values, dict) or not values:
        raise DataFormatError(f"{path}: expected a JSON object mapping elements to self energies")
    energies = {}
    for key, value in values.items():
        number = int(key) if key.isdigit() else SYMBOL_TO_NUMBER.get(key)
        if number is None or not 1 <= number <= MAX_ATOMIC_NUMBER:
            raise DataFormatError(f"{path}: unknown element '{key}'")
        if not isinstance(value, int | float) or not np.isfinite(value):
            raise DataFormatError(f"{path}: self energy of '{key}' is {value!r}, expected a finite number")
        energies[number] = float(value) * kcal_per_mol_per_unit
    return SelfEnergies(energies, "given")
