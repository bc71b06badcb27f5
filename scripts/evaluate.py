"""Energy and force errors (RMSE, MAE; kcal/mol and kcal/mol/Å) of a checkpoint on a prepared split.

Example: python scripts/evaluate.py --checkpoint runs/demo/piwsl/checkpoints/piwsl-seed0/best_checkpoint.pt \
    --data datasets/aspirin_demo/test --json piwsl_test.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from piwsl.checkpointing import CheckpointError
from piwsl.dataset_checks import DatasetError
from piwsl.evaluate import evaluate_checkpoint


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a fairchem/piwsl checkpoint (.pt)")
    parser.add_argument("--data", type=Path, required=True, help="an LMDB split directory, e.g. DIR/test")
    parser.add_argument("--batch-size", type=int, default=32, help="structures per forward pass")
    parser.add_argument("--json", type=Path, default=None, help="also write the errors to this JSON file")
    return parser


def run(args: argparse.Namespace) -> dict:
    errors = evaluate_checkpoint(args.checkpoint, args.data, args.batch_size)
    for name, value in errors.items():
        print(f"{name:15s} {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(errors | {"checkpoint": str(args.checkpoint), "data": str(args.data)}))
    return errors


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if not args.data.exists():
        print(f"error: data not found: {args.data}", file=sys.stderr)
        return 2
    try:
        run(args)
    except (FileNotFoundError, CheckpointError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # --json on a full or read-only disk
        print(f"error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
