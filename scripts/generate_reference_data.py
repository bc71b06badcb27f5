#!/usr/bin/env python
r"""Generate reference data sets for piwsl with GFN-xTB (tblite).

No public data set can be downloaded in the build environment, so this script
creates real reference data with semi-empirical quantum chemistry. The
generators live in ``piwsl.datagen``; this is their command line:

* ``aspirin-md`` (alias ``md``): Langevin MD of a molecule (aspirin, ethanol,
  any SMILES or an ASE G2 name) with GFN2-xTB, saved in the revised MD17
  (rMD17) ``.npz`` layout (kcal/mol, kcal/mol/Angstrom).
* ``ani1x-like``: rattled conformers of ~70 small H/C/N/O molecules labelled
  with GFN2-xTB, saved in the ANI-1x release HDF5 layout (Hartree, Hartree/Angstrom).
* ``many-molecules``: thousands of random C/H/N/O molecules (SELFIES, RDKit
  canonical SMILES), rattled and labelled with GFN2-xTB, ANI-1x HDF5 layout with
  each conformation's SMILES; resumable in chunks.
* ``tio2-xsf``: rattled and strained rutile/anatase supercells labelled with
  periodic GFN1-xTB, saved as aenet XSF files (eV, eV/Angstrom).

Every random choice is drawn from a seeded ``numpy.random.Generator`` and every
output is written to a temporary path next to its destination and then moved
into place with ``os.replace``. Run with ``OMP_NUM_THREADS=1``.

The committed files were made with (from the repository root):

  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py aspirin-md
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py aspirin-md \
      --molecule ethanol --frames 60 --out tests/data/rmd17_ethanol_gfn2xtb.npz
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py aspirin-md \
      --molecule ethanol --frames 500 --stride 20 --out data/rmd17_ethanol_gfn2xtb_500K.npz
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py md --name Ac-Ala3-NHMe \
      --smiles 'CC(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)NC' --frames 1500 \
      --timestep-fs 1.0 --stride 5 --equilibration-steps 1000 --layout sgdml \
      --out data/md22_ac_ala3_nhme_gfn2xtb_500K.npz
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py ani1x-like
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py ani1x-like \
      --max-formulas 6 --conformers-per-molecule 8 --out tests/data/ani1x_like_small.h5
  OMP_NUM_THREADS=1 nice -n 15 python scripts/generate_reference_data.py many-molecules
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py tio2-xsf
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py tio2-xsf \
      --structures 12 --out tests/data/tio2_xsf

Requires the ``datagen`` extra (tblite, rdkit, selfies), ase (>= 3.29), h5py, numpy and tqdm.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from piwsl.datagen.ani1x_like import AniLikeSettings, generate_ani1x_like
from piwsl.datagen.common import InputError
from piwsl.datagen.many_molecules import FORCE_GUARD_ATTEMPTS, ManyMoleculeSettings, generate_many_molecules
from piwsl.datagen.md import MD_MOLECULES, MDSettings, generate_md
from piwsl.datagen.sgdml import generate_as_sgdml
from piwsl.datagen.tio2 import TiO2Settings, generate_tio2_xsf


def positive_int(text: str) -> int:
    """Parse an integer >= 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def settings_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build the settings dataclass ``cls`` from the parsed options of the same names."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def run_md(args: argparse.Namespace) -> str:
    """Simulate the chosen molecule and write an rMD17 (or sGDML) ``.npz``; return the summary line."""
    if args.layout == "sgdml":
        return generate_as_sgdml(
            args.out, lambda rmd17: run_md(argparse.Namespace(**(vars(args) | {"layout": "rmd17", "out": rmd17})))
        )
    settings = settings_from_args(MDSettings, args)
    if args.smiles is not None:
        return generate_md(args.out, args.name or args.smiles, settings, smiles=args.smiles)
    if args.g2 is not None:
        return generate_md(args.out, args.name or args.g2, settings, g2_name=args.g2)
    molecule = args.molecule or "aspirin"
    return generate_md(args.out, args.name or molecule, settings, smiles=MD_MOLECULES[molecule])


def run_ani(args: argparse.Namespace) -> str:
    """Write the ANI-1x-like HDF5; return the summary line."""
    return generate_ani1x_like(args.out, settings_from_args(AniLikeSettings, args))


def run_many(args: argparse.Namespace) -> str:
    """Write (or resume) the many-molecule HDF5; return the summary line."""
    return generate_many_molecules(
        args.out,
        settings_from_args(ManyMoleculeSettings, args),
        workers=args.workers,
        chunk_size=args.chunk_size,
        work_dir=args.work_dir,
        stop_after_chunks=args.stop_after_chunks,
        keep_work_dir=args.keep_work_dir,
    )


def run_tio2(args: argparse.Namespace) -> str:
    """Write the TiO2 XSF directory; return the summary line."""
    return generate_tio2_xsf(args.out, settings_from_args(TiO2Settings, args))


def add_md_parser(sub: argparse._SubParsersAction) -> None:
    """The ``aspirin-md`` (alias ``md``) subcommand."""
    md = sub.add_parser(
        "aspirin-md",
        aliases=["md"],
        help="GFN2-xTB Langevin MD of aspirin, ethanol, a SMILES or a G2 molecule, rMD17 .npz format",
        description=generate_md.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = md.add_mutually_exclusive_group()
    which.add_argument(
        "--molecule",
        choices=sorted(MD_MOLECULES),
        default=None,
        help="molecule to simulate by name (built from SMILES with RDKit ETKDGv3 + MMFF94); aspirin if no "
        "--smiles/--g2 is given",
    )
    which.add_argument(
        "--smiles",
        default=None,
        help="simulate this molecule instead (SMILES, embedded with RDKit ETKDGv3 + MMFF94)",
    )
    which.add_argument("--g2", default=None, help="simulate this molecule of ASE's G2 collection instead (e.g. CH3OH)")
    md.add_argument(
        "--name",
        default=None,
        help="molecule name stored in the file; default the --molecule, --smiles or --g2 value",
    )
    md.add_argument("--frames", type=positive_int, default=1500, help="number of stored frames")
    md.add_argument(
        "--temperature",
        type=float,
        default=500.0,
        help="thermostat and initial-velocity temperature in K",
    )
    md.add_argument("--timestep-fs", type=float, default=0.5, help="MD time step in fs")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs")
    md.add_argument("--stride", type=positive_int, default=10, help="MD steps between stored frames")
    md.add_argument(
        "--equilibration-steps",
        type=int,
        default=2000,
        help="MD steps discarded before the first stored frame",
    )
    md.add_argument(
        "--relax-fmax",
        type=float,
        default=0.05,
        help="force threshold (eV/Angstrom) of the initial GFN2-xTB BFGS relaxation",
    )
    md.add_argument(
        "--relax-steps",
        type=int,
        default=200,
        help="maximum BFGS steps of the initial relaxation",
    )
    md.add_argument(
        "--method",
        choices=["GFN2-xTB", "GFN1-xTB"],
        default="GFN2-xTB",
        help="tblite Hamiltonian of the forces and energies",
    )
    md.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for RDKit embedding, initial velocities and Langevin noise",
    )
    md.add_argument(
        "--out",
        type=Path,
        default=Path("data/rmd17_aspirin_gfn2xtb_500K.npz"),
        help="output .npz path",
    )
    md.add_argument(
        "--layout",
        choices=["rmd17", "sgdml"],
        default="rmd17",
        help="npz keys: rMD17 (nuclear_charges, coords, energies, forces) or sGDML as MD17/MD22 (z, R, E, F)",
    )
    md.set_defaults(func=run_md)


def add_ani_parser(sub: argparse._SubParsersAction) -> None:
    """The ``ani1x-like`` subcommand."""
    ani = sub.add_parser(
        "ani1x-like",
        help="rattled small H/C/N/O molecules labelled by GFN2-xTB, ANI-1x HDF5 layout",
        description=generate_ani1x_like.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ani.add_argument(
        "--conformers-per-molecule",
        type=positive_int,
        default=30,
        help="rattled conformers generated per molecule",
    )
    ani.add_argument(
        "--rdkit-conformers",
        type=positive_int,
        default=4,
        help="RDKit base conformers per SMILES molecule (G2 molecules have one)",
    )
    ani.add_argument(
        "--max-formulas",
        type=positive_int,
        default=None,
        help="keep only this many randomly chosen formulas; None keeps all",
    )
    ani.add_argument(
        "--rattle-min",
        type=float,
        default=0.05,
        help="smallest Gaussian rattle standard deviation in Angstrom",
    )
    ani.add_argument(
        "--rattle-max",
        type=float,
        default=0.10,
        help="largest Gaussian rattle standard deviation in Angstrom",
    )
    ani.add_argument(
        "--min-distance-ratio",
        type=float,
        default=0.65,
        help="redraw a rattle if two atoms are closer than this fraction of their covalent-radius sum",
    )
    ani.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for RDKit embedding, formula choice and rattling",
    )
    ani.add_argument(
        "--out",
        type=Path,
        default=Path("data/ani1x_like_gfn2xtb.h5"),
        help="output HDF5 path",
    )
    ani.set_defaults(func=run_ani)


def add_many_parser(sub: argparse._SubParsersAction) -> None:
    """The ``many-molecules`` subcommand."""
    many = sub.add_parser(
        "many-molecules",
        help="thousands of random C/H/N/O molecules (1-8 heavy atoms), GFN2-xTB, ANI-1x HDF5 layout, resumable",
        description=generate_many_molecules.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = ManyMoleculeSettings()
    many.add_argument(
        "--molecules",
        type=positive_int,
        default=defaults.molecules,
        help="distinct molecules to sample (deduplicated by RDKit canonical SMILES)",
    )
    many.add_argument(
        "--conformers-per-molecule",
        type=positive_int,
        default=defaults.conformers_per_molecule,
        help="rattled conformations labelled per molecule",
    )
    many.add_argument(
        "--base-conformers",
        type=positive_int,
        default=defaults.base_conformers,
        help="RDKit ETKDGv3 + MMFF94 conformers per molecule that the rattles start from (used in turn)",
    )
    many.add_argument(
        "--rattle-sigmas",
        type=float,
        nargs="+",
        default=list(defaults.rattle_sigmas),
        help="Gaussian rattle standard deviations in Angstrom, used in turn over a molecule's conformations",
    )
    many.add_argument(
        "--min-distance-ratio",
        type=float,
        default=defaults.min_distance_ratio,
        help="redraw a rattle if two atoms are closer than this fraction of their covalent-radius sum",
    )
    many.add_argument(
        "--max-force",
        type=lambda text: None if text.lower() == "none" else float(text),
        default=defaults.max_force,
        help=f"largest force component in eV/Angstrom: a rattle with a larger one is redrawn (at most "
        f"{FORCE_GUARD_ATTEMPTS} times, then the conformation is left out); 'none' keeps every label",
    )
    many.add_argument(
        "--min-heavy-atoms", type=positive_int, default=defaults.min_heavy_atoms, help="fewest C/N/O atoms"
    )
    many.add_argument("--max-heavy-atoms", type=positive_int, default=defaults.max_heavy_atoms, help="most C/N/O atoms")
    many.add_argument(
        "--max-selfies-tokens",
        type=positive_int,
        default=defaults.max_selfies_tokens,
        help="random SELFIES strings have 1 to this many tokens",
    )
    many.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the molecule list, embeddings and rattles"
    )
    many.add_argument("--workers", type=positive_int, default=2, help="worker processes labelling molecules")
    many.add_argument(
        "--chunk-size",
        type=positive_int,
        default=100,
        help="molecules per chunk; each finished chunk is saved, so a kill loses at most one chunk",
    )
    many.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="directory of the finished chunks (default: OUT.work next to --out); a rerun reuses them",
    )
    many.add_argument(
        "--stop-after-chunks",
        type=positive_int,
        default=None,
        help="stop after this many new chunks without writing --out (a time-boxed run; rerun to continue)",
    )
    many.add_argument(
        "--keep-work-dir",
        action="store_true",
        help="keep the chunk files after the merge (they are removed otherwise)",
    )
    many.add_argument(
        "--out",
        type=Path,
        default=Path("data/many_molecules_gfn2xtb.h5"),
        help="output HDF5 path",
    )
    many.set_defaults(func=run_many)


def add_tio2_parser(sub: argparse._SubParsersAction) -> None:
    """The ``tio2-xsf`` subcommand."""
    tio2 = sub.add_parser(
        "tio2-xsf",
        help="strained/rattled rutile and anatase cells, GFN1-xTB labels, aenet XSF",
        description=generate_tio2_xsf.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tio2.add_argument(
        "--structures",
        type=positive_int,
        default=150,
        help="number of structures to generate",
    )
    tio2.add_argument(
        "--max-strain",
        type=float,
        default=0.04,
        help="largest absolute strain-tensor component",
    )
    tio2.add_argument(
        "--rattle-min",
        type=float,
        default=0.03,
        help="smallest Gaussian rattle standard deviation in Angstrom",
    )
    tio2.add_argument(
        "--rattle-max",
        type=float,
        default=0.12,
        help="largest Gaussian rattle standard deviation in Angstrom",
    )
    tio2.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="worker processes for the GFN1-xTB calculations",
    )
    tio2.add_argument(
        "--fd-components",
        type=int,
        default=4,
        help="force components of the first labelled structure checked by finite differences (0: none)",
    )
    tio2.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for phase, supercell, strain and rattle choices",
    )
    tio2.add_argument(
        "--out",
        type=Path,
        default=Path("data/tio2_gfn1xtb_xsf"),
        help="output directory of .xsf files",
    )
    tio2.set_defaults(func=run_tio2)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser with one subparser per data set."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_md_parser(sub)
    add_ani_parser(sub)
    add_many_parser(sub)
    add_tio2_parser(sub)
    return parser


def run(args: argparse.Namespace) -> str:
    """Run the generator chosen by ``args.command``; return its summary line."""
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the chosen generator; user errors exit with one line."""
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except InputError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
