"""Write structures into fairchem LMDBs: keys ``0..n-1`` holding pickled graph records, plus ``length``."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from types import TracebackType

import lmdb

from piwsl.data.structures import Structure

#: Map size reserved for one LMDB file; LMDB only uses what it writes.
MAP_SIZE = 1 << 40
#: Records per write transaction (bounds the memory of uncommitted pages).
COMMIT_EVERY = 1000
#: Records between reopenings of the file. Keys "0", "1", "10", ... are not in LMDB's (byte) order,
#: so inserts land all over the B-tree and the pages LMDB reads stay mapped: resident memory grew
#: ~25 MiB per 100,000 records. Unmapping now and then keeps it flat.
REOPEN_EVERY = 50 * COMMIT_EVERY
#: Permissions given to finished directories (temporary directories are created private).
DIRECTORY_MODE = 0o755
#: Suffix of the hidden staging directory ``.<name>.<random>.partial`` of one write attempt.
STAGING_SUFFIX = ".partial"
#: What ``write_lmdb`` puts in its directory; a directory holding anything else is never replaced.
LMDB_DIRECTORY_ENTRIES = frozenset({"data.lmdb", "data.lmdb-lock"})


class OutputExistsError(ValueError):
    """An output path that holds something piwsl did not write (or may not replace); never deleted."""


class LmdbWriter:
    """Append structures to ``directory/data.lmdb``; ``close()`` writes the length and finishes the file.

    Not atomic by itself: write inside a staging directory that is renamed when complete
    (``write_lmdb``, ``piwsl.data.prepare``). Used as a context manager, it closes on success and
    aborts (discarding the uncommitted transaction) on an exception.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._env = self._open()
        self._txn = self._env.begin(write=True)

    def _open(self) -> lmdb.Environment:
        return lmdb.open(str(self.directory / "data.lmdb"), map_size=MAP_SIZE, subdir=False, map_async=True)

    def add(self, structure: Structure) -> None:
        """Store ``structure`` under the next key (its ``sid``/``fid`` is that key)."""
        record = pickle.dumps(structure.to_data(self.count), protocol=pickle.HIGHEST_PROTOCOL)
        self._txn.put(f"{self.count}".encode("ascii"), record)
        self.count += 1
        if self.count % COMMIT_EVERY == 0:
            self._txn.commit()
            if self.count % REOPEN_EVERY == 0:
                self._env.close()
                self._env = self._open()
            self._txn = self._env.begin(write=True)

    def close(self) -> int:
        """Commit, store ``length``, sync and close; remove the lock file; return the record count."""
        self._txn.put(b"length", pickle.dumps(self.count, protocol=pickle.HIGHEST_PROTOCOL))
        self._txn.commit()
        self._env.sync()
        self._env.close()
        (self.directory / "data.lmdb-lock").unlink(missing_ok=True)
        return self.count

    def abort(self) -> None:
        """Drop the open transaction and close the file (its directory is the caller's to remove)."""
        self._txn.abort()
        self._env.close()

    def __enter__(self) -> LmdbWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_lmdb(structures: Iterable[Structure], path: Path) -> int:
    """Write ``structures`` to ``path/data.lmdb`` atomically; return how many were written.

    The database is built in a staging directory beside ``path`` and renamed into place at the
    end, so an interrupted conversion never leaves a half-written dataset at ``path``. An existing
    ``path`` is replaced only if it holds nothing but an LMDB written here (``OutputExistsError``).
    """
    path = Path(path)
    check_replaceable(path, LMDB_DIRECTORY_ENTRIES, "an LMDB directory written by piwsl")
    with staging_directory(path) as staging:
        with LmdbWriter(staging) as writer:
            for structure in structures:
                writer.add(structure)
        replace_directory(staging, path)
    return writer.count


def check_replaceable(path: Path, owned_entries: Collection[str], what: str) -> None:
    """Raise ``OutputExistsError`` unless ``path`` is absent, an empty directory, or holds only ``owned_entries``."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputExistsError(f"{path} exists and is not a directory; piwsl never deletes what it did not write")
    if not path.exists():
        return
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in owned_entries)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(
            f"{path} exists and is not {what} (it holds {shown}); piwsl never deletes what it did not write: "
            "choose another output path"
        )


@contextlib.contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """A new hidden directory ``.<name>.<random>.partial`` beside ``target``, locked while this attempt lives.

    Staging directories of earlier attempts that were killed (their lock is free) are removed
    first; on an exception the new one is removed too. The caller renames it into place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=STAGING_SUFFIX, dir=target.parent))
    descriptor = os.open(staging, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # an flock on the directory itself follows it through the rename
        staging.chmod(DIRECTORY_MODE)
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(descriptor)


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove the staging directories of ``target`` whose attempt is dead (lock free); return them."""
    prefix = f".{target.name}."
    removed = []
    for candidate in target.parent.glob(f"{prefix}*{STAGING_SUFFIX}"):
        middle = candidate.name[len(prefix) : -len(STAGING_SUFFIX)]
        if "." in middle or candidate.is_symlink() or not candidate.is_dir():
            continue  # another target's staging directory, or not ours
        descriptor = os.open(candidate, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live attempt
        finally:
            os.close(descriptor)
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def restore_interrupted_replacement(target: Path) -> Path | None:
    """Put back an old ``target`` that ``replace_directory`` had renamed aside when it was killed.

    A process killed between ``replace_directory``'s two renames leaves ``target`` absent and the old
    directory in ``.<name>.*.old/<name>``; with ``target`` absent, the newest such copy is moved back
    (and a warning says so). Returns the restored path, or None when there was nothing to restore.
    """
    target = Path(target)
    if target.exists() or target.is_symlink():
        return None
    leftovers = sorted(
        (path for path in target.parent.glob(f".{target.name}.*.old") if (path / target.name).is_dir()),
        key=lambda path: path.stat().st_mtime,
    )
    if not leftovers:
        return None
    os.replace(leftovers[-1] / target.name, target)
    shutil.rmtree(leftovers[-1], ignore_errors=True)
    warnings.warn(
        f"{target} was missing: a replacement of it was interrupted; restored the previous copy from "
        f"{leftovers[-1].name}",
        stacklevel=2,
    )
    return target


def replace_directory(staging: Path, target: Path) -> None:
    """Move the complete directory ``staging`` to ``target``, replacing any old ``target``.

    An old ``target`` is first renamed aside, so ``target`` is at every moment either the old or
    the new complete directory (or, between the two renames, absent, which
    ``restore_interrupted_replacement`` repairs), never a mixture.
    """
    restore_interrupted_replacement(target)
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
