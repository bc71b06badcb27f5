#!/usr/bin/env python
"""Energy and force errors (RMSE, MAE) of a checkpoint on a prepared split, in the training data's units.

Example: python scripts/evaluate.py --checkpoint runs/demo/piwsl/checkpoints/piwsl-seed0/best_checkpoint.pt \
    --data datasets/aspirin_demo/test --json piwsl_test.json --predictions piwsl_test.npz --plot piwsl_test.png

Elements the model never saw in training are an error (--allow-unseen-elements: a warning);
data prepared in other units or with other element references than the training data are an
error; structures that were in the training set are counted and warned about.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from piwsl.checkpointing import CheckpointError
from piwsl.dataset_checks import DatasetError


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a fairchem/piwsl checkpoint (.pt)")
    parser.add_argument("--data", type=Path, required=True, help="an LMDB split directory, e.g. DIR/test")
    parser.add_argument("--batch-size", type=int, default=32, help="structures per forward pass")
    parser.add_argument("--json", type=Path, default=None, help="also write the errors to this JSON file")
    parser.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="write per-structure predictions and labels in full precision: .npz (energies, all force "
        "components) or .csv (one row per structure: energies, energy error, force RMSE)",
    )
    parser.add_argument(
        "--plot", type=Path, default=None, help="draw energy and force parity plots with an error histogram (PNG)"
    )
    parser.add_argument(
        "--allow-unseen-elements",
        action="store_true",
        help="predict structures with elements absent from the training data (a warning instead of an error)",
    )
    return parser


def run(args: argparse.Namespace) -> dict:
    from piwsl.evaluate import evaluate, load_trainer

    trainer = load_trainer(args.checkpoint)
    errors, predictions = evaluate(
        trainer, args.data, args.batch_size, allow_unseen_elements=args.allow_unseen_elements, keep_predictions=True
    )
    result = asdict(errors)
    unit = errors.energy_unit
    units = {"energy_rmse": unit, "energy_mae": unit, "forces_rmse": f"{unit}/Å", "forces_mae": f"{unit}/Å"}
    for name, value in result.items():
        print(f"{name:15s} {value}{' ' + units[name] if name in units and value is not None else ''}")
    if args.json is not None:
        args.json.write_text(json.dumps(result | {"checkpoint": str(args.checkpoint), "data": str(args.data)}))
    if args.predictions is not None:
        predictions.save(args.predictions)
    if args.plot is not None:
        from piwsl.plots import plot_parity

        plot_parity(predictions, args.plot, title=f"{args.checkpoint.parent.name} on {args.data}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if not args.data.exists():
        print(f"error: data not found: {args.data}", file=sys.stderr)
        return 2
    if args.predictions is not None and args.predictions.suffix not in (".npz", ".csv"):
        print(f"error: --predictions {args.predictions}: use a .npz or .csv file name", file=sys.stderr)
        return 2
    from piwsl.training_data import OutsideTrainingDomainError

    try:
        run(args)
    except (FileNotFoundError, CheckpointError, OutsideTrainingDomainError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # --json on a full or read-only disk
        print(f"error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
