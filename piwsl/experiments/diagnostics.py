"""What the diagnostic commands share: naming models, reading structures, writing tables.

A model is given as ``LABEL=PATTERN``, split at the last ``=`` (labels may contain one); the
pattern (a glob, relative to the repository root or absolute) matches checkpoints (``*.pt``) or
run results (``runs/*.json``, whose best checkpoint is used). Several matches (e.g. the seeds of
one method) are averaged over where a diagnostic reports a mean ± std.
"""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

import numpy as np
from ase import Atoms

from piwsl.experiments.grid import ROOT, resolve


def parse_models(specs: list[str]) -> dict[str, list[Path]]:
    """``LABEL=PATTERN`` strings -> label -> checkpoint paths, in sorted order."""
    models: dict[str, list[Path]] = {}
    for spec in specs:
        label, separator, pattern = spec.rpartition("=")
        if not separator or not label or not pattern:
            raise ValueError(f"model {spec!r} is not LABEL=PATTERN (e.g. 'PIWSL=results/x/runs/*-piwsl-*.json')")
        matches = sorted(glob.glob(str(resolve(pattern))))
        if not matches:
            raise ValueError(f"model {label}: nothing matches {pattern}")
        models[label] = [checkpoint_of(Path(match)) for match in matches]
    return models


def checkpoint_of(path: Path) -> Path:
    """The checkpoint a path names: itself, or the best checkpoint of a run's results file."""
    if path.suffix == ".json":
        result = json.loads(path.read_text())
        if "best_checkpoint" not in result:
            raise ValueError(f"{path} is not a run's results file (no 'best_checkpoint')")
        return resolve(result["best_checkpoint"])
    return path


def load_structures(source: Path, indices: list[int]) -> list[Atoms]:
    """Structures from an rMD17-style ``.npz`` (frames), a prepared LMDB split directory, or an ASE file."""
    source = Path(source)
    if source.suffix == ".npz":
        data = np.load(source)
        return [Atoms(numbers=data["nuclear_charges"], positions=data["coords"][i]) for i in indices]
    if source.is_dir() and any(source.glob("*.lmdb")):
        from fairchem.core.datasets import LmdbDataset

        dataset = LmdbDataset({"src": str(source)})
        structures = []
        for i in indices:
            record = dataset[i]
            pbc = record.pbc.view(-1).numpy().astype(bool)
            cell = record.cell.view(3, 3).numpy() if pbc.any() else None
            structures.append(
                Atoms(numbers=record.atomic_numbers.numpy(), positions=record.pos.numpy(), cell=cell, pbc=pbc)
            )
        return structures
    from ase.io import read

    return [read(source, index=i) for i in indices]


def write_table(rows: list[dict], path_stem: Path, title: str, notes: str = "") -> str:
    """Write ``rows`` as ``<stem>.csv`` and ``<stem>.md``; return the markdown."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    header = list(rows[0])
    with open(path_stem.with_suffix(".csv"), "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in rows]
    markdown = "\n".join(lines + (["", notes] if notes else [])) + "\n"
    path_stem.with_suffix(".md").write_text(markdown)
    return markdown


def display(path: Path) -> str:
    """A path relative to the repository root where possible, for tables and logs."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
