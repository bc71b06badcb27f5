"""Checks of prepared datasets before training: readable LMDBs, matching units, finite labels, no overlap."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import lmdb
import numpy as np


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message names the file."""


def lmdb_files(source: Path) -> list[Path]:
    """The LMDB files of a fairchem ``src`` (a directory of ``*.lmdb`` files or one file)."""
    source = Path(source)
    return sorted(source.glob("*.lmdb")) if source.is_dir() else [source]


def _open(path: Path) -> lmdb.Environment:
    """Open read-only, refusing a truncated file (reading its missing pages would crash with SIGBUS)."""
    try:
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as error:
        raise DatasetError(f"{path}: not a readable LMDB ({error})") from error
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(path)
    if size < needed:
        env.close()
        raise DatasetError(f"{path}: LMDB is truncated ({size} of {needed} bytes); prepare the dataset again")
    return env


def _unpickle(path: Path, key: bytes, value: bytes):
    try:
        return pickle.loads(value)
    except Exception as error:  # unpickling damaged bytes raises many types
        raise DatasetError(f"{path}: record {key.decode(errors='replace')} is corrupt ({error})") from error


def _records(path: Path):
    """Yield the unpickled records of one LMDB file, with a clear error for a damaged file."""
    env = _open(path)
    try:
        with env.begin() as transaction:
            for key, value in transaction.cursor():
                if key != b"length":
                    yield key, _unpickle(path, key, value)
    except lmdb.Error as error:
        raise DatasetError(f"{path}: LMDB is truncated or corrupt ({error})") from error
    finally:
        env.close()


def check_readable(source: Path) -> int:
    """Open every LMDB of ``source`` and read its first and last record; return the record count."""
    files = lmdb_files(source)
    if not files:
        raise DatasetError(f"{source}: no *.lmdb files")
    total = 0
    for path in files:
        env = _open(path)
        try:
            with env.begin() as transaction:
                count = transaction.stat()["entries"] - (transaction.get(b"length") is not None)
                for key in (b"0", f"{count - 1}".encode()) if count else ():
                    value = transaction.get(key)
                    if value is None:
                        raise DatasetError(f"{path}: record {key.decode()} of {count} is missing (truncated file?)")
                    _unpickle(path, key, value)
        except lmdb.Error as error:
            raise DatasetError(f"{path}: LMDB is truncated or corrupt ({error})") from error
        finally:
            env.close()
        total += count
    return total


def check_units(source: Path, expected: dict[str, str]) -> None:
    """Compare the units in the ``metadata.json`` beside ``source`` with those the config expects."""
    metadata_file = Path(source).parent / "metadata.json"
    if not metadata_file.exists():
        return
    units = json.loads(metadata_file.read_text()).get("units", {})
    for quantity, unit in expected.items():
        if quantity in units and units[quantity] != unit:
            raise DatasetError(
                f"{metadata_file}: {quantity} is in {units[quantity]!r} but the config's units.{quantity} is {unit!r}"
            )


#: Record attributes that must be finite wherever present.
FINITE_KEYS = ("pos", "energy", "forces")


def check_finite_record(path: Path, key: bytes, record) -> None:
    """Raise ``DatasetError`` naming the record when its positions, energy or forces hold NaN or Inf."""
    for name in FINITE_KEYS:
        value = getattr(record, name, None) if not isinstance(record, dict) else record.get(name)
        if value is None:
            continue
        array = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            bad = "NaN" if np.any(np.isnan(array)) else "Inf"
            raise DatasetError(
                f"{path}: record {key.decode(errors='replace')} has {bad} in its {name}; "
                "remove the record or prepare the dataset again (prepare_data.py rejects such records)"
            )


def structure_fingerprints(source: Path) -> set[str]:
    """Hashes of (atomic numbers, positions rounded to 1e-4 Å) of every record of ``source``.

    Reading every record anyway, it also checks that each one's labels are finite (``check_finite_record``).
    """
    fingerprints = set()
    for path in lmdb_files(source):
        for key, record in _records(path):
            check_finite_record(path, key, record)
            numbers = np.asarray(record.atomic_numbers, dtype=np.int64)
            positions = np.round(np.asarray(record.pos, dtype=np.float64), 4) + 0.0  # +0.0: no negative zeros
            fingerprints.add(hashlib.sha1(numbers.tobytes() + positions.tobytes()).hexdigest())
    return fingerprints


def check_splits(sources: dict[str, Path]) -> None:
    """Read every record of every split once: labels finite, validation and test sets disjoint from training."""
    fingerprints = {split: structure_fingerprints(source) for split, source in sources.items()}
    for split, source in sources.items():
        if split != "train" and "train" in sources and source != sources["train"]:
            _check_overlap(fingerprints["train"], fingerprints[split], sources["train"], source, split)


def _check_overlap(train: set[str], other: set[str], train_path: Path, other_path: Path, name: str) -> None:
    shared = train & other
    if shared:
        raise DatasetError(
            f"{len(shared)} structure(s) of the {name} set {other_path} also appear in the training set {train_path}"
        )
