"""Stream the ANI-1x release HDF5 (4.96M conformers) in bounded memory.

Layout (Smith et al. 2020): one group per formula with ``atomic_numbers`` (N,), ``coordinates``
(M, N, 3) in Å, and labels such as ``wb97x_dz.energy`` (M,) in Ha and ``wb97x_dz.forces``
(M, N, 3) in Ha/Å. Groups may be nested; every group holding ``atomic_numbers`` and
``coordinates`` is read, in sorted path order, conformers in file order.

Labels the release does not have for a conformer are stored as NaN (e.g. CCSD(T) energies exist
for a subset only): such conformers are skipped, not an error, and counted in ``skipped()`` under
the first chosen key (energy, then forces) found NaN. Inf is an error. Memory: ``count()`` keeps
4 bytes per usable conformer (its row), and reading goes ``block_size`` conformers at a time.

Molecule identity (for a test set of unseen molecules, ``splits.make_molecule_split``): a group's
``smiles`` dataset (M,) when it has one (``piwsl.datagen.many_molecules`` writes it), otherwise the
group itself; in the ANI-1x release a group is a formula, so isomers share an identity there and a
split by molecule is a split by formula.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from piwsl.data.source import RecordSource
from piwsl.data.structures import Structure, molecule
from piwsl.data.units import HARTREE_TO_KCAL_PER_MOL
from piwsl.data.validation import DataFormatError, check_atomic_numbers

NUMBERS_KEY = "atomic_numbers"
COORDINATES_KEY = "coordinates"
DEFAULT_ENERGY_KEY = "wb97x_dz.energy"
DEFAULT_FORCE_KEY = "wb97x_dz.forces"
#: Optional per-conformer molecule identity (e.g. canonical SMILES) of a group.
MOLECULE_KEY = "smiles"


class Ani1xSource(RecordSource):
    """ANI-1x HDF5 with energies in Ha (``energy_key``) and forces in Ha/Å (``force_key``, or ``None``)."""

    data_format = "ani1x"
    energy_unit = "hartree"

    def __init__(
        self,
        path: Path,
        energy_key: str = DEFAULT_ENERGY_KEY,
        force_key: str | None = DEFAULT_FORCE_KEY,
        block_size: int = 4096,
    ) -> None:
        self.path = Path(path)
        self.energy_key = energy_key
        self.force_key = force_key
        self.block_size = block_size
        self._groups: list[tuple[str, np.ndarray]] = []
        self._skipped = {f"NaN {key}": 0 for key in self._label_keys()}

    def count(self) -> int:
        self._groups = []
        self._skipped = dict.fromkeys(self._skipped, 0)
        with self._open() as h5:
            for name in tqdm(_record_groups(h5, self.path), desc="index ANI-1x groups", unit="group", disable=None):
                self._groups.append((name, self._usable_rows(h5[name], name)))
        return sum(rows.size for _, rows in self._groups)

    def records(self, selected: np.ndarray | None = None) -> Iterator[tuple[int, Structure]]:
        with self._open() as h5:
            offset = 0
            for name, rows in self._groups:
                indices = np.arange(offset, offset + rows.size)
                offset += rows.size
                if selected is not None:
                    mask = selected[indices]
                    rows, indices = rows[mask], indices[mask]
                if rows.size:
                    yield from zip(indices.tolist(), self._read_group(h5[name], name, rows), strict=True)

    def compositions(self, selected: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        with self._open() as h5:
            offset = 0
            for name, rows in self._groups:
                chosen = rows[selected[offset : offset + rows.size]]
                offset += rows.size
                if chosen.size:
                    numbers = np.asarray(h5[name][NUMBERS_KEY], dtype=np.int64)
                    energies = np.asarray(h5[name][self.energy_key][...], dtype=np.float64).reshape(-1)[chosen]
                    for energy in energies:
                        yield numbers, float(energy) * HARTREE_TO_KCAL_PER_MOL

    def molecule_ids(self) -> np.ndarray:
        """Integer molecule identity of each usable conformer (see the module docstring); after ``count()``."""
        identities: dict[Any, int] = {}
        ids = []
        with self._open() as h5:
            for name, rows in self._groups:
                group = h5[name]
                if MOLECULE_KEY in group:
                    keys = np.asarray(group[MOLECULE_KEY][...])[rows].tolist()
                else:
                    keys = [("group", name)] * rows.size
                ids.append(np.array([identities.setdefault(key, len(identities)) for key in keys], dtype=np.int64))
        return np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)

    def skipped(self) -> dict[str, int]:
        return dict(self._skipped)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {
            "energy_key": self.energy_key,
            "force_key": self.force_key,
            "groups": len(self._groups),
        }

    def _label_keys(self) -> list[str]:
        return [self.energy_key] + ([self.force_key] if self.force_key else [])

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as error:
            raise DataFormatError(f"{self.path}: not a readable HDF5 file ({error})") from error

    def _usable_rows(self, group: h5py.Group, name: str) -> np.ndarray:
        """Check one group's keys and shapes; return the rows whose chosen labels are not NaN."""
        where = f"{self.path}:/{name}"
        missing = [key for key in self._label_keys() if key not in group]
        if missing:
            raise DataFormatError(f"{where}: missing dataset(s) {missing}; the group has {sorted(group)}")
        numbers, coordinates = group[NUMBERS_KEY], group[COORDINATES_KEY]
        if numbers.ndim != 1:
            raise DataFormatError(f"{where}: {NUMBERS_KEY} has shape {numbers.shape}, expected (N,)")
        num_atoms = numbers.shape[0]
        check_atomic_numbers(numbers[...], where)
        if coordinates.ndim != 3 or coordinates.shape[1:] != (num_atoms, 3):
            raise DataFormatError(
                f"{where}: {COORDINATES_KEY} has shape {coordinates.shape}, expected (M, {num_atoms}, 3)"
            )
        num_conformers = coordinates.shape[0]
        energy = group[self.energy_key]
        if energy.shape not in ((num_conformers,), (num_conformers, 1)):
            raise DataFormatError(f"{where}: {self.energy_key} has shape {energy.shape}, expected ({num_conformers},)")
        usable = _without_nan(np.asarray(energy[...], dtype=np.float64), self.energy_key, where, 0)
        self._skipped[f"NaN {self.energy_key}"] += int((~usable).sum())
        if self.force_key:
            forces = group[self.force_key]
            if forces.shape != coordinates.shape:
                raise DataFormatError(
                    f"{where}: {self.force_key} has shape {forces.shape}, expected {coordinates.shape}"
                )
            for start in range(0, num_conformers, self.block_size):
                block = np.asarray(forces[start : start + self.block_size], dtype=np.float64)
                before = usable[start : start + block.shape[0]]
                after = before & _without_nan(block, self.force_key, where, start)
                self._skipped[f"NaN {self.force_key}"] += int((before & ~after).sum())
                usable[start : start + block.shape[0]] = after
        return np.flatnonzero(usable).astype(np.int32)

    def _read_group(self, group: h5py.Group, name: str, rows: np.ndarray) -> Iterator[Structure]:
        """The conformers ``rows`` (sorted) of a group, reading ``block_size`` conformers at a time."""
        numbers = np.asarray(group[NUMBERS_KEY], dtype=np.int64)
        energies = np.asarray(group[self.energy_key][...], dtype=np.float64).reshape(-1)
        for start in range(rows[0] - rows[0] % self.block_size, rows[-1] + 1, self.block_size):
            first, last = np.searchsorted(rows, [start, start + self.block_size])
            local = rows[first:last]
            if local.size == 0:
                continue
            end = int(local[-1]) + 1
            coordinates = np.asarray(group[COORDINATES_KEY][start:end], dtype=np.float64)
            forces = np.asarray(group[self.force_key][start:end], dtype=np.float64) if self.force_key else None
            for row in local.tolist():
                yield molecule(
                    numbers,
                    coordinates[row - start],
                    energies[row] * HARTREE_TO_KCAL_PER_MOL,
                    None if forces is None else forces[row - start] * HARTREE_TO_KCAL_PER_MOL,
                    f"{self.path}:/{name}[{row}]",
                )


def _without_nan(values: np.ndarray, key: str, where: str, start: int) -> np.ndarray:
    """Which conformers (first axis of ``values``, from row ``start``) have no NaN; Inf is an error."""
    rows = values.reshape(values.shape[0], -1)
    infinite = np.isinf(rows).any(axis=1)
    if infinite.any():
        raise DataFormatError(f"{where}[{start + int(np.argmax(infinite))}]: {key} contains Inf")
    return ~np.isnan(rows).any(axis=1)


def _record_groups(h5: h5py.File, path: Path) -> list[str]:
    """Paths of the groups holding conformers (``atomic_numbers`` and ``coordinates``), sorted."""
    names: list[str] = []

    def visit(name: str, item: h5py.HLObject) -> None:
        if isinstance(item, h5py.Group) and NUMBERS_KEY in item and COORDINATES_KEY in item:
            names.append(name)

    h5.visititems(visit)
    if not names:
        raise DataFormatError(f"{path}: no group with '{NUMBERS_KEY}' and '{COORDINATES_KEY}' datasets")
    return sorted(names)
