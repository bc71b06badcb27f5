"""What a model was trained on, stored in its checkpoints: units, element references, elements, structures.

``describe_training_data`` runs once when a trainer is built for training; the record goes into
the trainer's config (``config["piwsl_training_data"]``), so every checkpoint carries it.
``scripts/evaluate.py`` and ``PIWSLCalculator`` read it back (``TrainingData.from_checkpoint``):

- ``units``: the energy and force units of the training labels, from the ``metadata.json`` that
  ``scripts/prepare_data.py`` writes beside the splits (``None`` for other data: then the unit must
  be given where the model is used);
- ``element_references``: the per-element self energies subtracted from the training energies
  (kcal/mol, ``metadata.json``'s block), so that total energies can be restored;
- ``elements``: atomic numbers present in the training set; a model is not to be trusted on others;
- ``fingerprints``: 64-bit hashes of the training structures (atomic numbers and positions rounded
  to 1e-4 Å), to warn when a model is evaluated on structures it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers as SYMBOL_TO_NUMBER
from ase.data import chemical_symbols

#: Key of the record in a trainer's config (and so in every checkpoint's ``config``).
TRAINING_DATA_KEY = "piwsl_training_data"


class OutsideTrainingDomainError(ValueError):
    """Input the model was not trained for: elements it never saw, atoms on top of each other."""


def structure_fingerprint(numbers: np.ndarray, positions: np.ndarray) -> int:
    """A signed 64-bit hash of (atomic numbers, positions rounded to 1e-4 Å)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    rounded = np.round(np.asarray(positions, dtype=np.float64), 4) + 0.0  # +0.0: no negative zeros
    digest = hashlib.sha1(numbers.tobytes() + rounded.tobytes()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def _metadata_beside(source: str | None) -> dict[str, Any]:
    """The ``metadata.json`` of a prepared dataset whose split ``source`` is, or ``{}``."""
    if not source:
        return {}
    path = Path(source).parent / "metadata.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def describe_training_data(dataset_config: dict[str, Any], dataset: Iterable) -> dict[str, Any]:
    """The record of the training data: units and references from ``metadata.json``, elements and hashes by a scan."""
    metadata = _metadata_beside(dataset_config.get("src"))
    elements: set[int] = set()
    fingerprints = []
    for record in dataset:
        numbers = record.atomic_numbers.long().numpy()
        elements.update(int(z) for z in np.unique(numbers))
        fingerprints.append(structure_fingerprint(numbers, record.pos.numpy()))
    references = metadata.get("element_references")
    return {
        "source": dataset_config.get("src"),
        "units": metadata.get("units"),
        "element_references": references if references and references.get("method", "none") != "none" else None,
        "elements": sorted(elements),
        "fingerprints": sorted(set(fingerprints)),
    }


@dataclass(frozen=True)
class TrainingData:
    """The training-data record of a checkpoint (see the module docstring)."""

    units: dict[str, str] | None = None
    element_references: dict[str, Any] | None = None
    elements: tuple[int, ...] = ()
    fingerprints: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    source: str | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> TrainingData | None:
        """The record of ``checkpoint`` (a loaded dict), or ``None`` for a checkpoint written without one."""
        record = checkpoint.get("config", {}).get(TRAINING_DATA_KEY)
        if record is None:
            return None
        return cls(
            units=record.get("units"),
            element_references=record.get("element_references"),
            elements=tuple(record.get("elements", ())),
            fingerprints=np.asarray(record.get("fingerprints", ()), dtype=np.int64),
            source=record.get("source"),
        )

    @property
    def energy_unit(self) -> str | None:
        return (self.units or {}).get("energy")

    def reference_energy(self, numbers: np.ndarray) -> float:
        """Sum of the element references of ``numbers`` in the references' unit (kcal/mol); 0 without references."""
        if not self.element_references:
            return 0.0
        energies = {SYMBOL_TO_NUMBER[symbol]: value for symbol, value in self.element_references["energies"].items()}
        return float(sum(energies.get(int(z), 0.0) for z in numbers))

    def check_elements(self, numbers: Iterable[int], where: str, allow_unseen: bool = False) -> None:
        """Error (or, with ``allow_unseen``, a warning) when ``numbers`` hold elements absent from training."""
        if not self.elements:
            return
        unseen = sorted({int(z) for z in numbers} - set(self.elements))
        if not unseen:
            return
        message = (
            f"{where}: element(s) {', '.join(chemical_symbols[z] for z in unseen)} never occur in the model's "
            f"training data (elements {', '.join(chemical_symbols[z] for z in self.elements)}); its predictions "
            "for them are meaningless"
        )
        if not allow_unseen:
            raise OutsideTrainingDomainError(message + " (allow them explicitly to predict anyway)")
        logging.warning(message)

    def seen_in_training(self, fingerprints: np.ndarray) -> np.ndarray:
        """Per structure fingerprint: is that structure in the training set?"""
        return np.isin(np.asarray(fingerprints, dtype=np.int64), self.fingerprints)
