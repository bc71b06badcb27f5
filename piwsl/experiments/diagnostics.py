"""What the diagnostic commands share: options, naming models, reading structures, writing tables.

A model is given as ``LABEL=PATTERN``, split at the last ``=`` (labels may contain one); the
pattern (a glob, relative to the repository root or absolute) matches checkpoints (``*.pt``) or
run results (``runs/*.json``, whose best checkpoint is used). Several matches (e.g. the seeds of
one method) are averaged over where a diagnostic reports a mean ± std; diagnostics of one model
per label (bond scan, MD) refuse a pattern that matches several.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from piwsl.data.units import KCAL_PER_MOL_PER
from piwsl.experiments.grid import ROOT, resolve

if TYPE_CHECKING:
    from piwsl.calculator import PIWSLCalculator

#: The start structure of the bond scan and MD unless --structure names another.
DEFAULT_STRUCTURE = ROOT / "data/rmd17_aspirin_gfn2xtb_500K.npz"


class DiagnosticInputError(ValueError):
    """A diagnostic's input that cannot be used (model pattern, checkpoint, structure); the message says which."""


def diagnostic_parser(doc: str, *, start_structure: bool, several_checkpoints: bool) -> argparse.ArgumentParser:
    """A parser with the options every diagnostic has: ``--model`` (repeatable) and ``--out``.

    Args:
        doc: the script's docstring (the ``--help`` text).
        start_structure: add ``--structure`` and ``--frame`` (the structure to start from).
        several_checkpoints: a ``--model`` pattern may match several checkpoints (averaged over);
            otherwise it must match exactly one.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if several_checkpoints:
        model_help = "LABEL=PATTERN: checkpoints (*.pt) or run results (runs/*.json) to average over; repeatable"
    else:
        model_help = "LABEL=PATH: one checkpoint or one run's results JSON (a glob must match exactly one); repeatable"
    parser.add_argument("--model", action="append", required=True, help=model_help)
    if start_structure:
        parser.add_argument(
            "--structure",
            type=Path,
            default=DEFAULT_STRUCTURE,
            help="an rMD17 .npz, a prepared LMDB split or an ASE file (default: the bundled aspirin)",
        )
        parser.add_argument("--frame", type=int, default=0, help="index of the start structure in --structure")
    parser.add_argument("--out", type=Path, default=Path("results/diagnostics"), help="output directory")
    parser.add_argument(
        "--energy-unit",
        choices=sorted(KCAL_PER_MOL_PER),
        help="unit of the models' training energies, for checkpoints that do not record it "
        "(written before piwsl recorded units; 'kcal/mol' for data prepared by scripts/prepare_data.py)",
    )
    return parser


def diagnostic_main(
    get_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], str],
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv``, print what ``run`` returns; exit code 0, or 2 with a one-line error for bad input."""
    args = get_parser().parse_args(argv)
    try:
        print(run(args))
    except DiagnosticInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def parse_models(specs: list[str]) -> dict[str, list[Path]]:
    """``LABEL=PATTERN`` strings -> label -> checkpoint paths, in sorted order (each file checked to exist)."""
    models: dict[str, list[Path]] = {}
    for spec in specs:
        label, separator, pattern = spec.rpartition("=")
        if not separator or not label or not pattern:
            raise DiagnosticInputError(
                f"model {spec!r} is not LABEL=PATTERN (e.g. 'PIWSL=results/x/runs/*-piwsl-*.json')"
            )
        if label in models:
            raise DiagnosticInputError(f"model label {label!r} is given twice; give each --model its own label")
        matches = sorted(glob.glob(str(resolve(pattern))))
        if not matches:
            raise DiagnosticInputError(f"model {label}: nothing matches {pattern}")
        models[label] = [checkpoint_of(Path(match)) for match in matches]
    return models


def parse_single_models(specs: list[str]) -> dict[str, Path]:
    """Like ``parse_models``, for diagnostics of one model per label: a pattern must match one checkpoint."""
    models = parse_models(specs)
    for (label, checkpoints), spec in zip(models.items(), specs, strict=True):
        if len(checkpoints) > 1:
            listed = ", ".join(display(path) for path in checkpoints)
            raise DiagnosticInputError(
                f"model {label}: {spec.rpartition('=')[2]} matches {len(checkpoints)} checkpoints ({listed}); "
                "this diagnostic uses one checkpoint per label: name one, or give each its own --model"
            )
    return {label: checkpoints[0] for label, checkpoints in models.items()}


def checkpoint_of(path: Path) -> Path:
    """The checkpoint a path names: itself, or the best checkpoint of a run's results file."""
    if path.suffix == ".json":
        result = json.loads(path.read_text())
        if "best_checkpoint" not in result:
            raise DiagnosticInputError(f"{path} is not a run's results file (no 'best_checkpoint')")
        path = resolve(result["best_checkpoint"])
    if not path.is_file():
        raise DiagnosticInputError(f"checkpoint not found: {path}")
    return path


def load_calculator(checkpoint: Path, energy_unit: str | None = None) -> PIWSLCalculator:
    """The ASE calculator of a checkpoint (on the CPU); ``energy_unit`` for checkpoints without the record."""
    from piwsl.calculator import PIWSLCalculator

    try:
        return PIWSLCalculator(checkpoint, energy_unit=energy_unit)
    except ValueError as error:  # no recorded unit and none given, or a contradicting one
        raise DiagnosticInputError(f"{error} (--energy-unit)") from None


def load_start_structure(args: argparse.Namespace) -> Atoms:
    """The structure ``--frame`` of ``--structure``."""
    (atoms,) = load_structures(args.structure, [args.frame])
    return atoms


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_structures(source: Path, indices: list[int]) -> list[Atoms]:
    """Structures from an rMD17-style ``.npz`` (frames), a prepared LMDB split directory, or an ASE file."""
    source = Path(source)
    if not source.exists():
        raise DiagnosticInputError(f"structure file not found: {source}")
    if source.suffix == ".npz":
        data = np.load(source)
        _check_indices(indices, len(data["coords"]), source)
        return [Atoms(numbers=data["nuclear_charges"], positions=data["coords"][i]) for i in indices]
    if source.is_dir() and any(source.glob("*.lmdb")):
        from fairchem.core.datasets import LmdbDataset

        dataset = LmdbDataset({"src": str(source)})
        _check_indices(indices, len(dataset), source)
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


def _check_indices(indices: list[int], count: int, source: Path) -> None:
    outside = [i for i in indices if not -count <= i < count]
    if outside:
        raise DiagnosticInputError(f"{source} holds {count} structures; no index {outside[0]}")


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
