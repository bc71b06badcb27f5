"""Checks of prepared datasets before training: readable LMDBs, matching units, no train/test overlap."""

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
                for key in (b"0", f"{count - 1}".encode()):
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


def structure_fingerprints(source: Path) -> set[str]:
    """Hashes of (atomic numbers, positions rounded to 1e-4 Å) of every record of ``source``."""
    fingerprints = set()
    for path in lmdb_files(source):
        for _key, record in _records(path):
            numbers = np.asarray(record.atomic_numbers, dtype=np.int64)
            positions = np.round(np.asarray(record.pos, dtype=np.float64), 4) + 0.0  # +0.0: no negative zeros
            fingerprints.add(hashlib.sha1(numbers.tobytes() + positions.tobytes()).hexdigest())
    return fingerprints


def check_disjoint(train: Path, other: Path, name: str) -> None:
    """Fail when a structure of ``other`` (validation or test) also appears in the training set."""
    shared = structure_fingerprints(train) & structure_fingerprints(other)
    if shared:
        raise DatasetError(
            f"{len(shared)} structure(s) of the {name} set {other} also appear in the training set {train}"
        )
