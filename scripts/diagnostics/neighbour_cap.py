#!/usr/bin/env python
"""How often PIWSL's displacements change a model's truncated neighbour lists (fairchem's ``max_neighbors``).

fairchem keeps at most ``max_neighbors`` neighbours per atom within the cutoff. In dense periodic
cells with a long cutoff (TiO2: several hundred atoms within 12 Å) the cap truncates every atom's
list, and a displacement of a few hundredths of an Å can swap which neighbours are kept: the
model's energy at ``S + dr`` then jumps and the consistency terms compare two different graphs.
For each cap this command reports the share of atoms whose list is truncated and the share of
displacements (drawn as the trainer draws them) that swap kept neighbours, and writes JSON.

Example:
  python scripts/diagnostics/neighbour_cap.py --data data/tio2_gfn1xtb_xsf_prepared/train --cutoff 12 \\
      --max-neighbors 20 50 200 1000 --max-displacement 0.05 --json results/neighbour_cap_tio2.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from piwsl.displacements import RandomDisplacementSampler
from piwsl.experiments.diagnostics import load_structures
from piwsl.jsonfiles import write_json_atomic
from piwsl.neighbours import atoms_to_batch, cap_changes_graph, neighbour_truncation


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, required=True, help="structures: a prepared LMDB split directory, an .npz or an ASE file"
    )
    parser.add_argument("--num-structures", type=int, default=10, help="first N structures of --data (default 10)")
    parser.add_argument("--cutoff", type=float, required=True, help="the model's cutoff radius, Å")
    parser.add_argument(
        "--max-neighbors", type=int, nargs="+", required=True, help="neighbour caps to compare (fairchem max_neighbors)"
    )
    parser.add_argument("--max-displacement", type=float, default=0.05, help="δr_max of the displacements, Å")
    parser.add_argument("--draws", type=int, default=5, help="displacements drawn per structure (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the displacement sampler")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return parser


def run(args: argparse.Namespace) -> dict:
    structures = load_structures(args.data, list(range(args.num_structures)))
    batch = atoms_to_batch(structures)
    sampler = RandomDisplacementSampler(args.max_displacement, seed=args.seed)
    displacements = [
        sampler.sample(batch.batch, int(batch.natoms.numel()), dtype=batch.pos.dtype) for _ in range(args.draws)
    ]
    rows = []
    for cap in args.max_neighbors:
        truncation = neighbour_truncation(batch, args.cutoff, cap)
        changed = [cap_changes_graph(batch, d, args.cutoff, cap) for d in tqdm(displacements, desc=f"cap {cap}")]
        rows.append(
            {
                "max_neighbors": cap,
                "truncated_atom_fraction": truncation.truncated_fraction,
                "largest_neighbour_count": truncation.largest_neighbour_count,
                "changed_displacement_fraction": float(torch.cat(changed).float().mean()),
            }
        )
    summary = {
        "data": str(args.data),
        "structures": len(structures),
        "atoms_per_structure": float(np.mean([len(a) for a in structures])),
        "cutoff": args.cutoff,
        "max_displacement": args.max_displacement,
        "draws_per_structure": args.draws,
        "rows": rows,
    }
    print(
        f"{args.data}: {len(structures)} structures of {summary['atoms_per_structure']:.0f} atoms, "
        f"cutoff {args.cutoff} Å, δr_max {args.max_displacement} Å, {args.draws} displacements each"
    )
    print(
        f"{'max_neighbors':>13s} {'truncated atoms':>16s} {'largest count':>14s} "
        f"{'displacements that swap kept neighbours':>40s}"
    )
    for row in rows:
        print(
            f"{row['max_neighbors']:13d} {100 * row['truncated_atom_fraction']:15.1f}% "
            f"{row['largest_neighbour_count']:14d} {100 * row['changed_displacement_fraction']:39.1f}%"
        )
    if args.json is not None:
        write_json_atomic(args.json, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    run(get_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
