"""Split labelled structures and write fairchem LMDBs plus a ``metadata.json``, atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from piwsl.data.lmdb_writer import write_lmdb
from piwsl.data.splits import Split, make_split
from piwsl.data.structures import Structure

ENERGY_UNIT = "kcal/mol"
FORCE_UNIT = "kcal/mol/Angstrom"


def file_checksum(path: Path) -> str:
    """SHA-256 of a file (or of the sorted files of a directory)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def train_statistics(structures: Sequence[Structure]) -> dict[str, float | None]:
    """Energy mean and standard deviation, and force RMS, of the training split (physical units)."""
    energies = np.array([s.energy for s in structures if s.energy is not None], dtype=np.float64)
    forces = [s.forces for s in structures if s.forces is not None]
    force_rms = float(np.sqrt(np.mean(np.concatenate([f.reshape(-1) for f in forces]) ** 2))) if forces else None
    return {
        "energy_mean": float(energies.mean()) if energies.size else None,
        "energy_std": float(energies.std()) if energies.size > 1 else None,
        "force_rms": force_rms,
    }


def prepare_dataset(
    structures: Sequence[Structure],
    out_dir: Path,
    train_size: int,
    val_size: int,
    test_size: int,
    seed: int,
    source: Path,
    data_format: str,
    train_without_forces: bool = False,
) -> dict:
    """Write ``out_dir/{train,val,test}/data.lmdb`` and ``out_dir/metadata.json``; return the metadata.

    ``train_without_forces`` drops the force labels of the training split (energy-only training,
    Sec. 5.4); validation and test keep theirs so that force errors can still be measured.
    """
    out_dir = Path(out_dir)
    split = make_split(len(structures), train_size, val_size, test_size, seed)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name, indices in _split_items(split):
            drop_forces = train_without_forces and name == "train"
            records = (replace(structures[i], forces=None) if drop_forces else structures[i] for i in indices)
            write_lmdb(records, staging / name)
        metadata = {
            "format": data_format,
            "source": str(Path(source).resolve()),
            "source_sha256": file_checksum(source),
            "units": {"energy": ENERGY_UNIT, "forces": FORCE_UNIT, "positions": "Angstrom"},
            "seed": seed,
            "split_sizes": split.sizes(),
            "split_indices": {name: indices.tolist() for name, indices in _split_items(split)},
            "train_statistics": train_statistics([structures[i] for i in split.train]),
            "train_has_forces": not train_without_forces,
            "elements": sorted({int(z) for s in structures for z in s.numbers}),
        }
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metadata


def _split_items(split: Split) -> list[tuple[str, np.ndarray]]:
    return [("train", split.train), ("val", split.val), ("test", split.test)]
