"""Convert reference data into fairchem LMDBs with the paper's split protocol (App. B).

Example: python scripts/prepare_data.py rmd17 --src data/rmd17_aspirin_gfn2xtb_500K.npz \
    --out datasets/aspirin --train-size 100 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from piwsl.data.formats import DataFormatError, read_rmd17
from piwsl.data.prepare import prepare_dataset
from piwsl.data.splits import default_val_size

READERS = {"rmd17": read_rmd17}
DEFAULT_TEST_SIZE = {"rmd17": 10_000}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(READERS), help="format of --src: rmd17 = rMD17 npz (kcal/mol)")
    parser.add_argument("--src", type=Path, required=True, help="input file or directory")
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
        help="test structures (default: 10,000 for rmd17, or all that is left if fewer); the same for every N_train",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle that defines the splits")
    parser.add_argument(
        "--energy-only",
        action="store_true",
        help="write the training split without force labels (energy-only training); val/test keep forces",
    )
    return parser


def run(args: argparse.Namespace) -> dict:
    if not args.src.exists():
        raise DataFormatError(f"input not found: {args.src}")
    structures = READERS[args.format](args.src)
    val_size = default_val_size(args.train_size) if args.val_size is None else args.val_size
    test_size = DEFAULT_TEST_SIZE[args.format] if args.test_size is None else args.test_size
    metadata = prepare_dataset(
        structures, args.out, args.train_size, val_size, test_size, args.seed, args.src, args.format, args.energy_only
    )
    print(f"wrote {args.out}: {json.dumps(metadata['split_sizes'])}")
    return metadata


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        run(args)
    except (DataFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
