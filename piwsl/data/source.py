"""The interface every format reader implements: count cheaply, then stream the chosen records.

Preparing a data set takes two passes over a source (``piwsl.data.prepare``): ``count()``
numbers the usable records 0..n-1 without holding them, the split is drawn from that count, and
``records(selected)`` streams only the chosen records, in index order, into the writers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from piwsl.data.structures import Structure


class RecordSource(ABC):
    """A labelled data set in one file or directory, converted to kcal/mol, kcal/mol/Å and Å.

    Attributes:
        path: the file or directory read.
        data_format: the format's name (``ani1x``, ``rmd17``, ...).
        energy_unit: unit of the energies in the file, a key of ``units.KCAL_PER_MOL_PER``.
    """

    path: Path
    data_format: str
    energy_unit: str

    @abstractmethod
    def count(self) -> int:
        """Number the usable records 0..n-1 (first pass, no labels kept in memory); return n."""

    @abstractmethod
    def records(self, selected: np.ndarray | None = None) -> Iterator[tuple[int, Structure]]:
        """Yield ``(index, structure)`` in index order for each index where ``selected`` (bool, (n,)) is set.

        ``None`` selects every record. ``count()`` must have been called first.
        """

    def compositions(self, selected: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """Yield atomic numbers and total energy (kcal/mol) of the selected records, in index order.

        Readers override this when the energies can be read without the geometries.
        """
        for _, structure in self.records(selected):
            yield structure.numbers, float(structure.energy)

    def molecule_ids(self) -> np.ndarray | None:
        """Molecule identity of each usable record (n,), for splits by molecule; ``None`` if the format has none."""
        return None

    def skipped(self) -> dict[str, int]:
        """Records left out by ``count()``, by reason (e.g. a missing label stored as NaN)."""
        return {}

    def settings(self) -> dict[str, Any]:
        """Reader settings recorded in ``metadata.json`` (keys read, units of the file)."""
        return {"source_energy_unit": self.energy_unit}


class StructureListSource(RecordSource):
    """Structures already in memory (already in kcal/mol), e.g. from ``read_rmd17``."""

    def __init__(self, structures: Sequence[Structure], path: Path, data_format: str) -> None:
        self.structures = structures
        self.path = Path(path)
        self.data_format = data_format
        self.energy_unit = "kcal/mol"

    def count(self) -> int:
        return len(self.structures)

    def records(self, selected: np.ndarray | None = None) -> Iterator[tuple[int, Structure]]:
        indices = range(len(self.structures)) if selected is None else np.flatnonzero(selected)
        for index in indices:
            yield int(index), self.structures[index]
