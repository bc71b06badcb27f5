#!/usr/bin/env python
"""Convert reference data into fairchem LMDBs with the paper's split protocol (App. B, C).

Writes OUT/train, OUT/val, OUT/test (fairchem LmdbDataset directories) and OUT/metadata.json
(units, source and checksum, split sizes/indices and seed, train normalizer statistics, element
references), atomically: a failed run leaves no OUT behind and an existing OUT untouched.
Energies are stored in kcal/mol, forces in kcal/mol/Angstrom, positions in Angstrom.

Splits: seeded shuffle; the test set is drawn first (10,000 for ani1x/rmd17/sgdml, 1,000 otherwise, or
all that is left), so it is the same for every --train-size with the same --seed; then train,
then validation (--train-size, at least 100, by default). With --split-by molecule (ani1x only) the
test set, then the validation set, hold whole molecules that no training record shares (validation
as the test set measures unseen molecules; both the same for every --train-size): a group's per-conformer
'smiles' dataset where it has one (scripts/generate_reference_data.py many-molecules writes it),
otherwise the group, which in the ANI-1x release is a formula (so isomers go to the test set
together). metadata.json records split_by and the number of molecules in each split. With
--test-conformations K it also writes OUT/test_conformations: unseen conformations of training
molecules (one per training molecule at most, up to K, from a pool of one conformation per other
molecule set aside before train and validation are drawn; it grows with --train-size).

--out must be absent, an empty directory, or (with --overwrite) a dataset this script wrote;
anything else there is refused, never deleted. Staging directories (.NAME.*.partial beside --out)
of conversions that were killed are removed by the next run.

ani1x is streamed (two passes; memory does not grow with the file beyond 4 bytes per conformer).
Its conformers whose chosen labels are NaN (labels the release lacks, e.g. CCSD(T) energies) are
skipped and counted in metadata.json; Inf is an error. Every record written is checked (shapes,
NaN/Inf, elements, cell); an energy larger in magnitude than any total energy of its atoms can be
in the source unit is rejected as a unit mistake (see --skip-unit-check).

Examples:
  python scripts/prepare_data.py ani1x --src ani1x-release.h5 --out datasets/ani1x --train-size 1000 --seed 0
  python scripts/prepare_data.py rmd17 --src rmd17_aspirin.npz --out datasets/rmd17_aspirin --train-size 1000
  python scripts/prepare_data.py md22 --src md22_Ac-Ala3-NHMe.npz --out datasets/md22_ac_ala3 --train-size 1000
  python scripts/prepare_data.py sgdml --src data/dft/ethanol_wb97x_631gs/train.npz --force-key none \
      --test-src data/dft/ethanol_wb97x_631gs/test.npz --out datasets/ethanol_dft --train-size 50 --val-size 20
  python scripts/prepare_data.py tio2 --src TiO2/ --out datasets/tio2 --train-size 1000
  python scripts/prepare_data.py lmnto --src lmnto.extxyz --out datasets/lmnto --train-size 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import lmdb

from piwsl.data.formats import FORMATS, open_source
from piwsl.data.prepare import prepare_dataset
from piwsl.data.references import SelfEnergies, load_self_energies
from piwsl.data.splits import default_val_size
from piwsl.data.units import KCAL_PER_MOL_PER
from piwsl.data.validation import DataFormatError


def get_parser() -> argparse.ArgumentParser:
    formats = "; ".join(f"{name}: {spec.description}" for name, spec in FORMATS.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(FORMATS), help=f"format of --src. {formats}")
    parser.add_argument(
        "--src",
        type=Path,
        required=True,
        help="input file (ani1x, rmd17, sgdml/md17/md22, ase, lmnto) or directory (tio2, ase, lmnto)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory; gets train/, val/, test/ LMDBs and metadata.json"
    )
    parser.add_argument("--train-size", type=int, required=True, help="number of training structures N_train")
    parser.add_argument(
        "--val-size", type=int, default=None, help="validation structures (default: N_train, at least 100)"
    )
    parser.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="test structures, drawn first: the same for every N_train with the same seed and test size; a "
        "source too small for it is an error (default: 10,000 for ani1x, rmd17 and sgdml, 1,000 for tio2, lmnto "
        "and ase, or what train and validation leave, with a warning: that test set changes with N_train)",
    )
    parser.add_argument(
        "--test-src",
        type=Path,
        default=None,
        help="take the whole test split from this file (same format and energy unit as --src, elements found in "
        "--src's training and validation splits; e.g. a DFT test set with forces beside an energy-only training "
        "file); --src then gives validation (drawn first: the same for every N_train) and train. Forces are read "
        "with the format's default key even when --force-key is 'none'; --test-size, if given, must be its count",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle that defines the splits (default 0)")
    parser.add_argument(
        "--split-by",
        choices=["conformation", "molecule"],
        default="conformation",
        help="'conformation': the paper's shuffle of records; 'molecule' (ani1x only): test and validation sets of "
        "unseen molecules (whole molecules from a group's 'smiles' dataset, or whole groups = formulas without one), "
        "drawn first; train is conformations of the other molecules (default: conformation)",
    )
    parser.add_argument(
        "--test-conformations",
        type=int,
        default=0,
        metavar="K",
        help="with --split-by molecule: also write OUT/test_conformations, up to K unseen conformations of training "
        "molecules (at most one per training molecule; never in train or validation) (default 0: none)",
    )
    parser.add_argument(
        "--energy-key",
        default=None,
        help="dataset/key holding the energies (default: ani1x 'wb97x_dz.energy' in Ha, e.g. 'ccsd(t)_cbs.energy'; "
        "rmd17 'energies'; sgdml 'E'; ase/lmnto 'energy' from the calculator or atoms.info, in eV); not for tio2",
    )
    parser.add_argument(
        "--force-key",
        default=None,
        help="dataset/key holding the forces (default: ani1x 'wb97x_dz.forces' in Ha/Angstrom; rmd17 'forces'; "
        "sgdml 'F'; ase/lmnto 'forces' in eV/Angstrom), or 'none' for data without forces; not for tio2",
    )
    parser.add_argument(
        "--self-energies",
        default=None,
        help="per-element self energies subtracted from every energy: 'fit' (least squares on the training split), "
        "'none', or a JSON file {\"H\": -0.6, ...} in the source file's unit (Ha for ani1x, eV for tio2/lmnto/ase, "
        "kcal/mol for rmd17 and sgdml). Default: 'none' for rmd17 and sgdml, 'fit' otherwise. Stored in metadata.json",
    )
    parser.add_argument(
        "--energy-only",
        action="store_true",
        help="write the training split without force labels (energy-only training); val/test keep forces",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dataset at --out that this script wrote (recognized by its metadata.json); "
        "anything else at --out is never deleted",
    )
    parser.add_argument(
        "--skip-unit-check",
        action="store_true",
        help="do not reject energies whose magnitude exceeds any total energy of their atoms in the source unit "
        "(a sign the file is in another unit, e.g. kcal/mol read as Hartree)",
    )
    return parser


def run(args: argparse.Namespace) -> dict:
    """Prepare the data set described by ``args``; return its metadata."""
    label_keys = {}
    if args.energy_key is not None:
        label_keys["energy_key"] = args.energy_key
    if args.force_key is not None:
        label_keys["force_key"] = None if args.force_key.lower() == "none" else args.force_key
    source = open_source(args.format, args.src, **label_keys)
    test_source = None
    if args.test_src is not None:
        test_keys = {key: value for key, value in label_keys.items() if value is not None}
        test_source = open_source(args.format, args.test_src, **test_keys)
    spec = FORMATS[args.format]
    choice = spec.default_self_energies if args.self_energies is None else args.self_energies
    if choice in ("fit", "none"):
        self_energies: SelfEnergies | str = choice
    else:
        self_energies = load_self_energies(Path(choice), KCAL_PER_MOL_PER[source.energy_unit])
    metadata = prepare_dataset(
        source,
        args.out,
        args.train_size,
        default_val_size(args.train_size) if args.val_size is None else args.val_size,
        args.test_size,
        args.seed,
        train_without_forces=args.energy_only,
        self_energies=self_energies,
        check_units=not args.skip_unit_check,
        overwrite=args.overwrite,
        split_by=args.split_by,
        test_conformations=args.test_conformations,
        test_records=test_source,
    )
    for warning in metadata["unit_warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    skipped = {reason: n for reason, n in metadata["skipped_records"].items() if n}
    note = f", skipped {json.dumps(skipped)}" if skipped else ""
    print(f"wrote {args.out}: {json.dumps(metadata['split_sizes'])} of {metadata['num_records']} records{note}")
    return metadata


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        run(args)
    except (DataFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the output disk is full, read-only, or not ours
        print(f"error: cannot write {error.filename or args.out}: {error.strerror or error}", file=sys.stderr)
        return 1
    except lmdb.Error as error:
        print(f"error: cannot write the LMDBs of {args.out}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
