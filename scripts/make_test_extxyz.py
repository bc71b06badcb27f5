#!/usr/bin/env python
"""Make the small extxyz test files for the ``ase``/``lmnto`` readers from real labelled data.

No labels are invented: the periodic file holds TiO2 supercells of ``tests/data/tio2_xsf``
(GFN1-xTB, aenet XSF, eV), the molecular one ethanol frames of
``tests/data/rmd17_ethanol_gfn2xtb.npz`` (GFN2-xTB, kcal/mol, converted to eV). Both are written
with ASE's extxyz writer (energies in eV, forces in eV/Angstrom), with the source record of each
frame in its ``info``.

  python scripts/make_test_extxyz.py   # writes tests/data/tio2_gfn1xtb.extxyz, tests/data/ethanol_gfn2xtb.extxyz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from piwsl.data.formats import read_rmd17, read_xsf
from piwsl.data.structures import Structure
from piwsl.data.units import EV_TO_KCAL_PER_MOL

ROOT = Path(__file__).resolve().parents[1]


def to_atoms(structure: Structure) -> Atoms:
    """An ASE ``Atoms`` with the structure's labels in eV and eV/Å and its source in ``info``."""
    atoms = Atoms(numbers=structure.numbers, positions=structure.positions, cell=structure.cell, pbc=structure.pbc)
    atoms.info["source"] = str(Path(structure.source).relative_to(ROOT))
    atoms.calc = SinglePointCalculator(
        atoms, energy=structure.energy / EV_TO_KCAL_PER_MOL, forces=structure.forces / EV_TO_KCAL_PER_MOL
    )
    return atoms


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--xsf-dir", type=Path, default=ROOT / "tests/data/tio2_xsf", help="directory of aenet XSF files"
    )
    parser.add_argument("--xsf-every", type=int, default=2, help="take every k-th XSF file in sorted order")
    parser.add_argument(
        "--npz", type=Path, default=ROOT / "tests/data/rmd17_ethanol_gfn2xtb.npz", help="rMD17 npz of the molecule"
    )
    parser.add_argument("--frames", type=int, default=8, help="number of npz frames (the first ones)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "tests/data", help="directory the files go to")
    return parser


def run(args: argparse.Namespace) -> list[Path]:
    """Write the periodic and the molecular extxyz file; return their paths."""
    xsf_files = sorted(args.xsf_dir.glob("*.xsf"))[:: args.xsf_every]
    periodic = [to_atoms(read_xsf(path)) for path in xsf_files]
    molecular = [to_atoms(structure) for structure in read_rmd17(args.npz)[: args.frames]]
    paths = [args.out_dir / "tio2_gfn1xtb.extxyz", args.out_dir / "ethanol_gfn2xtb.extxyz"]
    for path, images in zip(paths, (periodic, molecular), strict=True):
        write(path, images, format="extxyz")
        print(f"wrote {path}: {len(images)} structures")
    return paths


def main(argv: list[str] | None = None) -> int:
    run(get_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
