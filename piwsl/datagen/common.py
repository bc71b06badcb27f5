"""Helpers shared by the generators: atomic writes, provenance, finiteness checks, unit factors."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

EV_TO_KCAL_MOL = 23.060548
"""kcal/mol per eV."""
HARTREE_TO_EV = 27.211386
"""eV per Hartree."""


class InputError(ValueError):
    """A user error in a generator's input (an unknown molecule, an unparsable SMILES, bad settings)."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it.

    The temporary file lives in the destination directory so that the final
    ``os.replace`` is atomic; it is removed if ``write`` raises.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_dir)`` on a fresh directory next to ``path``, then swap it into place.

    An existing ``path`` is replaced only once the new directory is complete; the temporary
    directory is removed if ``write`` raises.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp_dir)
        os.chmod(tmp_dir, 0o755)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp_dir, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp_dir, path)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def check_finite(name: str, *arrays: np.ndarray) -> None:
    """Raise ``ValueError`` if any array contains NaN or infinity."""
    for array in arrays:
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: non-finite values in generated data")


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution in ``names`` (``"not installed"`` if missing)."""
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def command_line() -> str:
    """The command that started this process, shell-quoted (for provenance)."""
    return shlex.join([Path(sys.executable).name, *sys.argv])
