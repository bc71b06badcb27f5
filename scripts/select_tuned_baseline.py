#!/usr/bin/env python
"""Choose the tuned baseline from a sweep study's validation results, and record the choice.

Each method of the study is a setting (e.g. supervised energy coefficient x learning-rate
schedule). Its score is the mean over N_train of its validation metric (best checkpoint, mean over
the seeds run) divided by the best value any setting reached at that N_train; the lowest score
wins, but the study's reference (the paper's setting) stays unless it is beaten by more than
--tolerance (relative). Test errors are never read. Prints
every setting's score and writes RESULTS_DIR/tuned_baseline.json (--out to write elsewhere).
A sweep with a setting missing at some N_train is refused, naming what is missing. With --grid,
also checks that the grid's tuned method (--method) has the chosen setting: exit code 3 if not
(experiments/paper_regime.sh skips the tuned baseline's runs until the grid is edited).

Example (after `scripts/run_experiments.py --grid experiments/grids/paper_regime.yml --study sweep`):
  python scripts/select_tuned_baseline.py results/paper_regime
Then set `baseline_tuned: *<chosen>` in experiments/grids/paper_regime.yml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from piwsl.experiments.grid import GridError
from piwsl.experiments.tuning import (
    DEFAULT_METRIC,
    DEFAULT_TOLERANCE,
    SelectionError,
    format_selection,
    grid_uses_choice,
    select,
)
from piwsl.jsonfiles import write_json_atomic


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path, help="results directory of the grid (runs/*.json and grid.json)")
    parser.add_argument("--study", default="sweep", help="the sweep study of the grid (default: %(default)s)")
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help="validation metric to select on, lower is better (default: %(default)s)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="relative score margin by which a setting must beat the study's reference (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON record (default: RESULTS_DIR/tuned_baseline.json)")
    parser.add_argument(
        "--grid", type=Path, default=None, help="grid file whose --method must have the chosen setting (exit 3 if not)"
    )
    parser.add_argument("--method", default="baseline_tuned", help="the grid's tuned method (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        selection = select(args.results_dir, args.study, args.metric, args.tolerance)
        print(format_selection(selection))
        out = args.out or args.results_dir / "tuned_baseline.json"
        write_json_atomic(out, selection.to_json())
        chosen = selection.chosen.method
        print(f"wrote {out}; the grid's tuned method is to be `{args.method}: *{chosen}`")
        if args.grid is not None and not grid_uses_choice(args.grid, args.method, chosen):
            print(f"error: {args.grid}: method {args.method} does not have the chosen setting; set "
                  f"`{args.method}: *{chosen}` there", file=sys.stderr)  # fmt: skip
            return 3
    except (SelectionError, GridError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
