"""Write structures into a fairchem LMDB atomically (a failure leaves nothing behind)."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Iterable
from pathlib import Path

import lmdb

from piwsl.data.structures import Structure

#: Map size reserved for one LMDB file; LMDB only uses what it writes.
MAP_SIZE = 1 << 40


def write_lmdb(structures: Iterable[Structure], path: Path) -> int:
    """Write ``structures`` to ``path/data.lmdb`` with keys 0..n-1; return how many were written.

    The database is built in a sibling temporary directory and renamed into place at the end, so
    an interrupted conversion never leaves a half-written dataset at ``path``.
    """
    path = Path(path)
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    count = 0
    try:
        env = lmdb.open(str(staging / "data.lmdb"), map_size=MAP_SIZE, subdir=False, meminit=False, map_async=True)
        try:
            txn = env.begin(write=True)
            for count, structure in enumerate(structures, start=1):
                txn.put(f"{count - 1}".encode("ascii"), pickle.dumps(structure.to_data(count - 1), protocol=-1))
                if count % 1000 == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            txn.put(b"length", pickle.dumps(count, protocol=-1))
            txn.commit()
            env.sync()
        finally:
            env.close()
        lock = staging / "data.lmdb-lock"
        if lock.exists():
            lock.unlink()
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return count
