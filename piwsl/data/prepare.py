"""The one writer pipeline every format streams into: split, reference, check, write, describe.

``prepare_dataset`` makes two passes over a ``RecordSource`` (a format reader, or structures in
memory): ``count()`` numbers the usable records, the paper's split is drawn from the count
(``splits.make_split``), self energies are fitted on the training split's compositions when
asked, then ``records()`` streams only the chosen records, each checked and routed to its split's
LMDB writer while the training split's normalizer statistics accumulate. Everything is written
into a staging directory renamed to ``out_dir`` at the end: a failure leaves no dataset behind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from tqdm import tqdm

from piwsl.data.formats import FORMATS
from piwsl.data.lmdb_writer import (
    LMDB_DIRECTORY_ENTRIES,
    LmdbWriter,
    OutputExistsError,
    check_replaceable,
    replace_directory,
    restore_interrupted_replacement,
    staging_directory,
)
from piwsl.data.references import SelfEnergies, fit_self_energies
from piwsl.data.source import RecordSource, StructureListSource
from piwsl.data.splits import (
    Split,
    default_test_size,
    make_molecule_split,
    make_split,
    make_split_with_test_file,
)
from piwsl.data.structures import Structure
from piwsl.data.units import ENERGY_UNIT, FORCE_UNIT, POSITION_UNIT
from piwsl.data.validation import DataFormatError, check_energy_unit, check_label_magnitudes, check_structure

SPLITS = ("train", "val", "test")
#: Optional extra split (``--test-conformations``): unseen conformations of training molecules.
EXTRA_SPLITS = ("test_conformations",)
#: Record indices (in the source's order of usable records) of each split, one JSON object.
SPLIT_INDICES_FILE = "split_indices.json"
METADATA_FILE = "metadata.json"
#: Everything a dataset directory written by piwsl holds (``split_request.json``: the experiment runner's).
DATASET_ENTRIES = frozenset({*SPLITS, *EXTRA_SPLITS, METADATA_FILE, SPLIT_INDICES_FILE, "split_request.json"})


def is_prepared_dataset(path: Path) -> bool:
    """Whether ``path`` is a dataset directory written by ``prepare_dataset`` (its ``metadata.json`` says so)."""
    try:
        metadata = json.loads((Path(path) / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and {"split_sizes", "units", "source_sha256"} <= set(metadata)


def check_output_path(out_dir: Path, source: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` whose replacement could destroy data piwsl did not write (``OutputExistsError``).

    Allowed: an absent path, an empty directory, or (with ``overwrite``) a dataset written by
    ``prepare_dataset`` holding nothing else. Never allowed: ``out_dir`` equal to, inside, or
    containing ``source``.
    """
    out, src = Path(out_dir).resolve(), Path(source).resolve()
    if out == src or out in src.parents:
        raise OutputExistsError(f"--out {out_dir} contains the source {source}; choose an output path outside it")
    if src in out.parents:
        raise OutputExistsError(f"--out {out_dir} is inside the source directory {source}; choose a path outside it")
    out_dir = Path(out_dir)
    restore_interrupted_replacement(out_dir)
    if out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir()):
        return
    if out_dir.exists() or out_dir.is_symlink():
        if not is_prepared_dataset(out_dir):
            check_replaceable(out_dir, (), "a dataset prepared by piwsl (no valid metadata.json)")
        check_replaceable(out_dir, DATASET_ENTRIES, "only a dataset prepared by piwsl")
        for split in SPLITS + EXTRA_SPLITS:
            if (out_dir / split).exists():
                check_replaceable(out_dir / split, LMDB_DIRECTORY_ENTRIES, "an LMDB directory written by piwsl")
        if not overwrite:
            raise OutputExistsError(f"{out_dir} is a prepared dataset already; pass --overwrite to replace it")


def file_checksum(path: Path) -> str:
    """SHA-256 of a file, or of the sorted files of a directory (names and contents)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class TrainStatistics:
    """Streaming energy/force statistics of the training split (kcal/mol, kcal/mol/Å).

    Energies use Welford's update (totals of ~1e5 kcal/mol vary by a few kcal/mol: summing
    squares would cancel catastrophically); force components are centred near zero.
    """

    def __init__(self) -> None:
        self.structures = 0
        self.atoms = 0
        self.energy_mean = 0.0
        self._energy_m2 = 0.0
        self.force_components = 0
        self._force_sum = 0.0
        self._force_square_sum = 0.0

    def add(self, structure: Structure) -> None:
        self.structures += 1
        self.atoms += structure.numbers.size
        delta = structure.energy - self.energy_mean
        self.energy_mean += delta / self.structures
        self._energy_m2 += delta * (structure.energy - self.energy_mean)
        if structure.forces is not None:
            self.force_components += structure.forces.size
            self._force_sum += float(structure.forces.sum())
            self._force_square_sum += float(np.square(structure.forces).sum())

    def to_json(self) -> dict[str, float | int | None]:
        """Counts, energy mean/std (sample std, as fairchem's normalizer fit), force mean and RMS."""
        forces = self.force_components > 0
        return {
            "structures": self.structures,
            "atoms": self.atoms,
            "energy_mean": self.energy_mean if self.structures else None,
            "energy_std": float(np.sqrt(self._energy_m2 / (self.structures - 1))) if self.structures > 1 else None,
            "force_mean": self._force_sum / self.force_components if forces else None,
            "force_rms": float(np.sqrt(self._force_square_sum / self.force_components)) if forces else None,
        }


def prepare_dataset(
    records: RecordSource | Sequence[Structure],
    out_dir: Path,
    train_size: int,
    val_size: int,
    test_size: int | None,
    seed: int,
    source: Path | None = None,
    data_format: str | None = None,
    train_without_forces: bool = False,
    self_energies: SelfEnergies | str = "none",
    check_units: bool = True,
    overwrite: bool = False,
    split_by: str = "conformation",
    test_conformations: int = 0,
    test_records: RecordSource | None = None,
) -> dict:
    """Write ``out_dir/{train,val,test}/data.lmdb`` and ``out_dir/metadata.json``; return the metadata.

    Args:
        records: a format reader, or structures in memory (then ``source`` and ``data_format`` name them).
        out_dir: the dataset directory, replaced atomically when complete.
        train_size, val_size, test_size, seed: the split (``splits.make_split``); ``test_size`` ``None``
            is the format's default, or what train and validation leave (``splits.default_test_size``).
        train_without_forces: drop the training split's force labels (energy-only training, Sec. 5.4);
            validation and test keep theirs so that force errors can still be measured.
        self_energies: ``"fit"`` (least squares on the training split), ``"none"``, or given values.
        check_units: reject energies too large for a total energy in the source's unit
            (``validation.check_energy_unit``).
        overwrite: replace an existing dataset written here (anything else at ``out_dir`` is refused).
        split_by: ``"conformation"`` (the paper's shuffle of records, ``splits.make_split``) or
            ``"molecule"`` (a test set of whole molecules no other split has, from the source's
            ``molecule_ids()``, ``splits.make_molecule_split``).
        test_conformations: with ``split_by="molecule"``, also write ``test_conformations``: at most
            this many unseen conformations of training molecules (``splits.make_molecule_split``).
        test_records: a second source of the same format and energy unit whose every record is the
            test split (``splits.make_split_with_test_file``: validation then train drawn from
            ``records``); ``test_size``, if given, must equal its count. Its elements must occur in
            the training split; the self energies fitted on the training split are subtracted from it.
    """
    if not isinstance(records, RecordSource):
        if source is None or data_format is None:
            raise ValueError("structures in memory need source= and data_format= to describe them")
        records = StructureListSource(records, Path(source), data_format)
    out_dir = Path(out_dir)
    check_output_path(out_dir, records.path, overwrite)
    num_records = records.count()
    if test_records is not None:
        split, split_details = _split_with_test_file(records, test_records, num_records, train_size, val_size,
                                                     test_size, seed, split_by)  # fmt: skip
    elif test_size is None:
        format_default = FORMATS[records.data_format].default_test_size
        test_size = default_test_size(num_records, train_size, val_size, format_default)
        if test_size < format_default:
            logging.warning(
                f"{records.path}: {num_records} records leave {test_size} for the test set (default "
                f"{format_default}); that test set changes with the training size: pass a test size "
                "that fits the largest training size to keep it fixed"
            )
    if test_records is None:
        split, split_details = _draw_split(
            records, num_records, train_size, val_size, test_size, seed, split_by, test_conformations
        )
    assignment = np.zeros(num_records, dtype=np.int8)
    # a test file's records are written after the source's (their split is "test", code 3)
    written_here = split.names() if test_records is None else ("train", "val")
    for code, name in enumerate(written_here, start=1):
        assignment[getattr(split, name)] = code
    if self_energies == "fit":
        self_energies = fit_self_energies(records.compositions(assignment == 1))
        if self_energies.rank is not None and self_energies.rank < len(self_energies.energies):
            logging.warning(
                f"{records.path}: the training split's compositions determine only {self_energies.rank} combination(s) "
                f"of the {len(self_energies.energies)} element self energies (e.g. one molecule's frames); the "
                "minimum-norm fit subtracts the right total from these compositions only, its per-element values "
                "do not transfer to other compositions"
            )
    elif self_energies == "none":
        self_energies = SelfEnergies()
    elif not isinstance(self_energies, SelfEnergies):
        raise ValueError(f"self_energies must be 'fit', 'none' or a SelfEnergies, not {self_energies!r}")
    with staging_directory(out_dir) as staging:
        statistics, elements, has_forces, test_has_forces = _write_splits(
            records, assignment, split.names(), staging, self_energies, train_without_forces, check_units, test_records
        )
        unit_warnings = (
            check_label_magnitudes(statistics, records.energy_unit, self_energies.method != "none", str(records.path))
            if check_units
            else []
        )
        metadata = {
            "format": records.data_format,
            "source": str(records.path.resolve()),
            "source_sha256": file_checksum(records.path),
            "reader": records.settings(),
            "units": {"energy": ENERGY_UNIT, "forces": FORCE_UNIT, "positions": POSITION_UNIT},
            "seed": seed,
            "num_records": num_records,
            "skipped_records": records.skipped(),
            "split_sizes": split.sizes(),
            **split_details,
            "split_indices_file": SPLIT_INDICES_FILE,
            "train_statistics": statistics,
            "normalizers": {
                "energy": {"mean": statistics["energy_mean"], "rmsd": statistics["energy_std"]},
                "forces": {"mean": 0.0, "rmsd": statistics["force_rms"]},
            },
            "element_references": self_energies.to_json(),
            "has_forces": has_forces,
            "train_has_forces": has_forces and not train_without_forces,
            "elements": [chemical_symbols[z] for z in sorted(elements)],
            "unit_check": check_units,
            "unit_warnings": unit_warnings,
            "piwsl_version": version("piwsl"),
        }
        if test_records is not None:
            metadata |= {
                "test_source": str(test_records.path.resolve()),
                "test_source_sha256": file_checksum(test_records.path),
                "test_reader": test_records.settings(),
                "test_has_forces": test_has_forces,
            }
        indices = {name: getattr(split, name).tolist() for name in split.names()}
        (staging / SPLIT_INDICES_FILE).write_text(json.dumps(indices, separators=(",", ":")) + "\n")
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
        check_output_path(out_dir, records.path, overwrite)  # what was checked may have changed meanwhile
        replace_directory(staging, out_dir)
    return metadata


def _split_with_test_file(
    records: RecordSource,
    test_records: RecordSource,
    num_records: int,
    train_size: int,
    val_size: int,
    test_size: int | None,
    seed: int,
    split_by: str,
) -> tuple[Split, dict]:
    """Train and validation from ``records``, every record of ``test_records`` as the test split."""
    if split_by != "conformation":
        raise ValueError(f"--test-src takes the test split from another file; split_by {split_by!r} does not apply")
    if test_records.data_format != records.data_format:
        raise ValueError(
            f"--test-src {test_records.path} is read as {test_records.data_format}, --src as {records.data_format}"
        )
    if test_records.energy_unit != records.energy_unit:
        raise ValueError(
            f"--test-src {test_records.path} has energies in {test_records.energy_unit}, --src {records.path} in "
            f"{records.energy_unit}: both files must be in the same unit"
        )
    test_count = test_records.count()
    if test_size is not None and test_size != test_count:
        raise ValueError(
            f"--test-size {test_size}: --test-src {test_records.path} holds {test_count} records, all of which "
            "are the test split (leave --test-size out or give that number)"
        )
    split = make_split_with_test_file(num_records, train_size, val_size, test_count, seed)
    return split, {"split_by": "test_file"}


def _draw_split(
    records: RecordSource,
    num_records: int,
    train_size: int,
    val_size: int,
    test_size: int,
    seed: int,
    split_by: str,
    test_conformations: int = 0,
) -> tuple[Split, dict]:
    """The split by conformation or by molecule, and what ``metadata.json`` records about it."""
    if test_conformations and split_by != "molecule":
        raise ValueError(
            "--test-conformations needs --split-by molecule (split by conformation, the test set is "
            "unseen conformations already)"
        )
    if split_by == "conformation":
        return make_split(num_records, train_size, val_size, test_size, seed), {"split_by": split_by}
    if split_by != "molecule":
        raise ValueError(f"split_by must be 'conformation' or 'molecule', not {split_by!r}")
    molecules = records.molecule_ids()
    if molecules is None:
        raise ValueError(
            f"{records.path}: the {records.data_format} format has no molecule identity; split by "
            "'conformation' (a split by molecule needs ani1x)"
        )
    split = make_molecule_split(molecules, train_size, val_size, test_size, seed, test_conformations)
    counts = {name: int(np.unique(molecules[getattr(split, name)]).size) for name in split.names()}
    details = {"split_by": split_by, "split_molecules": counts}
    if test_conformations:
        details["test_conformations_requested"] = test_conformations
    if test_conformations and len(split.test_conformations) == 0:
        raise ValueError("no training molecule has a conformation left for --test-conformations")
    return split, details


def _write_splits(
    records: RecordSource,
    assignment: np.ndarray,
    names: tuple[str, ...],
    staging: Path,
    self_energies: SelfEnergies,
    train_without_forces: bool,
    check_units: bool,
    test_records: RecordSource | None = None,
) -> tuple[dict, set[int], bool, bool]:
    """Stream the chosen records into one LMDB per split; return train statistics, elements, force presence.

    With ``test_records`` every record of that source goes to the test split after the others (its
    elements must occur in the training or validation split). Returns the force presence of
    ``records`` and whether the test file has forces.
    """
    writers = [LmdbWriter(staging / name) for name in names]
    statistics = TrainStatistics()
    elements: set[int] = set()
    has_forces: bool | None = None
    test_has_forces = False
    wanted = int(np.count_nonzero(assignment))
    try:
        stream = records.records(assignment > 0)
        if test_records is not None:
            stream = itertools.chain(stream, _test_file_records(test_records, assignment.size))
            wanted += test_records.count()
        for index, structure in tqdm(stream, total=wanted, desc="write LMDBs", unit="structure", disable=None):
            check_structure(structure)
            if check_units:
                check_energy_unit(structure, records.energy_unit)
            reference = self_energies.total(structure.numbers, structure.source)
            if index >= assignment.size:  # a record of the test file, after every record of the main source
                check_test_elements(structure, elements, records.path)
                test_has_forces = test_has_forces or structure.forces is not None
                writers[2].add(replace(structure, energy=structure.energy - reference))
                continue
            if has_forces is None:
                has_forces = structure.forces is not None
            elif has_forces != (structure.forces is not None):
                state = "has" if structure.forces is not None else "has no"
                raise DataFormatError(f"{structure.source}: {state} forces, unlike the records before it")
            structure = replace(structure, energy=structure.energy - reference)
            code = int(assignment[index])
            if code == 1:
                statistics.add(structure)
                if train_without_forces:
                    structure = replace(structure, forces=None)
            writers[code - 1].add(structure)
            elements.update(int(z) for z in np.unique(structure.numbers))
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    written = [writer.close() for writer in writers]
    expected = [int(np.count_nonzero(assignment == code)) for code in range(1, len(names) + 1)]
    if test_records is not None:
        expected[2] = wanted - expected[0] - expected[1]
    if written != expected:
        raise DataFormatError(
            f"{records.path}: read {written} {'/'.join(names)} records, expected {expected}; did it change while read?"
        )
    return statistics.to_json(), elements, bool(has_forces), test_has_forces


def _test_file_records(test_records: RecordSource, offset: int) -> Iterator[tuple[int, Structure]]:
    """Every record of the test file, numbered after the main source's ``offset`` records."""
    for index, structure in test_records.records():
        yield offset + index, structure


def check_test_elements(structure: Structure, elements: set[int], source: Path) -> None:
    """Refuse a test-file structure with elements the training split of ``source`` lacks."""
    new = sorted({int(z) for z in structure.numbers} - elements)
    if new:
        raise DataFormatError(
            f"{structure.source}: element(s) {', '.join(chemical_symbols[z] for z in new)} of the --test-src "
            f"file do not occur in the training and validation data of {source}"
        )
