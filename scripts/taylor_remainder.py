#!/usr/bin/env python
"""How far the reference potential itself is from PIWSL's consistency targets at its displacements.

PITC asks a model to satisfy ``E(S + dr) = E(S) - sum_i <dr_i, F_i(S)>`` (``taylor``, the paper's
form) or ``E(S + dr) = E(S) - 1/2 sum_i <dr_i, F_i(S) + F_i(S + dr)>`` (``trapezoid``). The true
potential satisfies neither exactly: its remainder ``E_ref(S + dr) - target`` is the bias that the
consistency target carries, second order in ``|dr|`` for the Taylor form, third order for the
trapezoid form. This command draws displacements exactly as the trainer does
(``piwsl.displacements``), evaluates the reference method (GFN2-xTB through tblite) at the
displaced geometries of structures from an rMD17-format file, and reports the RMS remainder of both
forms per ``max_displacement``, next to the energy spread of the data. Energies in kcal/mol.

Example: python scripts/taylor_remainder.py --data data/rmd17_aspirin_gfn2xtb_500K.npz \
    --max-displacement 0.01 0.02 0.03 0.05 0.1 --structures 40 --json remainder.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from piwsl.data.formats import read_rmd17
from piwsl.data.units import EV_TO_KCAL_PER_MOL
from piwsl.displacements import RandomDisplacementSampler
from piwsl.jsonfiles import write_json_atomic


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="rMD17-format npz labelled with GFN2-xTB")
    parser.add_argument(
        "--max-displacement", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05, 0.1], help="dr_max values, Å"
    )
    parser.add_argument("--form", choices=["gaussian", "normalized"], default="gaussian", help="displacement form")
    parser.add_argument("--structures", type=int, default=40, help="structures drawn from the file (evenly spaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the displacement sampler")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return parser


def run(args: argparse.Namespace) -> dict:
    from ase import Atoms
    from tblite.ase import TBLite

    structures = read_rmd17(args.data)
    chosen = [structures[i] for i in np.linspace(0, len(structures) - 1, args.structures).astype(int)]
    energies = np.array([s.energy for s in structures])
    calculator = TBLite(method="GFN2-xTB", verbosity=0)
    rows = []
    for max_displacement in args.max_displacement:
        sampler = RandomDisplacementSampler(max_displacement, form=args.form, seed=args.seed)
        remainders: dict[str, list[float]] = {"taylor": [], "trapezoid": []}
        for structure in tqdm(chosen, desc=f"dr_max {max_displacement} Å"):
            count = len(structure.numbers)
            displacement = sampler.sample(torch.zeros(count, dtype=torch.long), 1, dtype=torch.float64).numpy()
            atoms = Atoms(numbers=structure.numbers, positions=structure.positions + displacement)
            atoms.calc = calculator
            displaced = atoms.get_potential_energy() * EV_TO_KCAL_PER_MOL
            forces_displaced = atoms.get_forces() * EV_TO_KCAL_PER_MOL
            taylor = structure.energy - float(np.sum(displacement * structure.forces))
            trapezoid = structure.energy - 0.5 * float(np.sum(displacement * (structure.forces + forces_displaced)))
            remainders["taylor"].append(displaced - taylor)
            remainders["trapezoid"].append(displaced - trapezoid)
        row: dict[str, float] = {"max_displacement": max_displacement}
        for form, values in remainders.items():
            values = np.array(values)
            row[f"{form}_rms_remainder"] = float(np.sqrt(np.mean(values**2)))
            row[f"{form}_mean_remainder"] = float(np.mean(values))
            row[f"{form}_max_abs_remainder"] = float(np.max(np.abs(values)))
        rows.append(row)
    summary = {"data": str(args.data), "form": args.form, "energy_std": float(energies.std()), "rows": rows}
    print(f"{args.data.name}: energy std of the data {summary['energy_std']:.2f} kcal/mol ({args.form} form)")
    print(f"{'':10s} {'Taylor (paper)':>26s}   {'trapezoid':>26s}")
    print(f"{'dr_max (Å)':>10s} " + f"{'RMS':>8s} {'mean':>8s} {'max |.|':>8s}   " * 2 + "(kcal/mol)")
    for row in rows:
        cells = "   ".join(
            f"{row[f'{form}_rms_remainder']:8.3f} {row[f'{form}_mean_remainder']:8.3f} "
            f"{row[f'{form}_max_abs_remainder']:8.3f}"
            for form in ("taylor", "trapezoid")
        )
        print(f"{row['max_displacement']:10.3f} {cells}")
    if args.json is not None:
        write_json_atomic(args.json, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    run(get_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
