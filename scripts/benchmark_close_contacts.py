#!/usr/bin/env python
"""Time ``close_contacts`` against a whole PIWSL training step, for molecules of about 40, 100 and 400 atoms.

The PIWSL trainer checks every random displacement for atoms pushed closer than ``min_distance``
(``piwsl.displacements.close_contacts``) before the forward pass. This script measures what share
of a training step (small PaiNN, PIWSL batched, the body of fairchem's loop as in
benchmark_step.py) that check takes. Structures are copies of a real aspirin frame (21 atoms)
placed side by side 12 Angstrom apart: 2, 5 and 19 copies make 42, 105 and 399 atoms. Both are
timed on the same batches, round-robin, and the medians reported.

Example: OMP_NUM_THREADS=1 python scripts/benchmark_close_contacts.py --json results/benchmarks/close_contacts.json
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from piwsl.data.formats import read_rmd17
from piwsl.data.prepare import prepare_dataset
from piwsl.data.structures import Structure
from piwsl.displacements import close_contacts
from piwsl.jsonfiles import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
#: Spacing of the molecule copies, Å: far beyond any cutoff of the small models' graphs.
COPY_SPACING = 12.0


def load_step_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_step", ROOT / "scripts/benchmark_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--copies", default="2,5,19", help="copies of the 21-atom molecule per structure, comma-separated"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="structures per batch (default 8)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per size (median reported)")
    parser.add_argument("--repeats", type=int, default=20, help="timed close_contacts calls per size")
    parser.add_argument("--model", default="painn_small", help="model config under configs/models/ (no .yml)")
    parser.add_argument(
        "--data", type=Path, default=ROOT / "data/rmd17_aspirin_gfn2xtb_500K.npz", help="rMD17 npz of the molecule"
    )
    parser.add_argument("--label", default="", help="name of the close_contacts implementation, stored in the JSON")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return parser


def tiled(structure: Structure, copies: int) -> Structure:
    """``copies`` copies of a molecule on a line ``COPY_SPACING`` Å apart; energy and forces add up."""
    shifts = np.arange(copies)[:, None, None] * np.array([COPY_SPACING, 0.0, 0.0])
    return Structure(
        numbers=np.tile(structure.numbers, copies),
        positions=(structure.positions[None] + shifts).reshape(-1, 3),
        energy=structure.energy * copies,
        forces=np.tile(structure.forces, (copies, 1)),
        cell=structure.cell,
        pbc=structure.pbc,
        source=f"{structure.source} x{copies}",
    )


def measure(args: argparse.Namespace, step_module, structures: list[Structure], work: Path) -> dict:
    """Median step time and median ``close_contacts`` time on the batches of ``structures``."""
    from piwsl.cli import build_trainer

    count = args.batch_size * 2
    prepare_dataset(structures[: count + 4], work / "data", count, 2, 2, 0, args.data, "rmd17")
    step_args = argparse.Namespace(model=args.model, force_mode=None, batch_size=args.batch_size)
    config = step_module.make_config(step_args, work / "data", work / "run", {"method": "piwsl"})
    trainer = build_trainer(config, cpu=True)
    batches = list(trainer.train_loader)
    min_distance = trainer.piwsl_config.min_distance
    step_times, check_times = [], []
    for step in range(1 + max(args.steps, args.repeats)):
        batch = batches[step % len(batches)]
        displacement = trainer.random_sampler.sample(batch.batch, int(batch.natoms.numel()), None, batch.pos.dtype)
        start = time.perf_counter()
        close_contacts(batch.pos, displacement, batch.batch, batch.natoms, batch.cell, batch.pbc, min_distance)
        if step > 0 and step <= args.repeats:
            check_times.append(time.perf_counter() - start)
        if step <= args.steps:
            start = time.perf_counter()
            step_module.training_step(trainer, batch)
            if step > 0:
                step_times.append(time.perf_counter() - start)
    step_s, check_s = statistics.median(step_times), statistics.median(check_times)
    return {
        "atoms_per_structure": int(structures[0].numbers.size),
        "batch_atoms": int(batches[0].pos.shape[0]),
        "median_step_s": step_s,
        "median_close_contacts_s": check_s,
        "close_contacts_share_of_step": check_s / step_s,
    }


def run(args: argparse.Namespace) -> dict:
    logging.disable(logging.WARNING)
    step_module = load_step_benchmark()
    molecules = read_rmd17(args.data)
    rows = []
    for copies in (int(c) for c in args.copies.split(",")):
        structures = [tiled(molecule, copies) for molecule in molecules[: args.batch_size * 2 + 4]]
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(args, step_module, structures, Path(tmp)))
        row = rows[-1]
        print(
            f"{row['atoms_per_structure']:4d} atoms x {args.batch_size}: step {1000 * row['median_step_s']:8.1f} ms, "
            f"close_contacts {1000 * row['median_close_contacts_s']:7.2f} ms "
            f"({100 * row['close_contacts_share_of_step']:.1f} % of the step)"
        )
    summary = {
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "implementation": args.label,
        "commit": subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "results": rows,
    }
    if args.json is not None:
        write_json_atomic(args.json, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    run(get_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
