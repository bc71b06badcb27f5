#!/usr/bin/env python
"""Hyper-parameter search for (C_PITC, C_PISC, δr_max) with Optuna, as the paper did (App. B).

Every trial trains one run of a grid file (--run, a run of method piwsl, e.g.
ani1x-painn-piwsl-n1000-s0) with the trial's values in its piwsl section and scores the
best-validation checkpoint on the VALIDATION split (the paper tuned on a separately drawn 1K
ANI-1x split: give the grid's data set a split_seed of its own, as experiments/grids/paper_hpo.yml
does). One --objective: TPE; two or more: multi-objective TPE and a Pareto front. Trials are
stored in WORK_DIR/hpo/<run>.db with their objectives: rerunning with the same --objective(s)
adds --trials trials to the search (other objectives are refused). A trial interrupted during
training is not resumed; the next trial trains from scratch.

Writes RESULTS_DIR/hpo/<run>/trials.md|.csv (completed trials, best first, Pareto-optimal marked)
and the trials' result files under RESULTS_DIR/hpo/<run>/runs/.

Example (needs `pip install optuna`):
  python scripts/hpo.py --grid experiments/grids/paper_hpo.yml --run ani1x-painn-piwsl-n1000-s100 \\
      --trials 50 --objective energy_rmse --objective forces_rmse
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from piwsl.experiments.diagnostics import write_table
from piwsl.experiments.grid import ROOT, GridError, load_grid
from piwsl.experiments.hpo import OBJECTIVES, HPOError, SearchSpace, search, trial_rows
from piwsl.experiments.runner import Options, Paths, RunFailed


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True, help="grid file holding the run to tune")
    parser.add_argument("--run", required=True, help="name of the grid's run to tune (see run_experiments.py --list)")
    parser.add_argument("--trials", type=int, default=20, help="trials to add to the search (default 20)")
    parser.add_argument(
        "--objective",
        action="append",
        choices=OBJECTIVES,
        default=None,
        help="validation error to minimize; repeat for a multi-objective search (default: forces_mae)",
    )
    parser.add_argument(
        "--c-pitc", type=float, nargs=2, default=(0.01, 10.0), metavar=("LOW", "HIGH"), help="C_PITC range (log)"
    )
    parser.add_argument(
        "--c-pisc", type=float, nargs=2, default=(1e-4, 1.0), metavar=("LOW", "HIGH"), help="C_PISC range (log)"
    )
    parser.add_argument(
        "--max-displacement",
        type=float,
        nargs=2,
        default=(0.01, 0.1),
        metavar=("LOW", "HIGH"),
        help="δr_max range in Å (uniform; at most 0.327)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: results/<grid>")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: runs/experiments/<grid>")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "datasets/experiments", help="prepared splits")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="training device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> str:
    grid = load_grid(args.grid)
    runs = {spec.name: spec for spec in grid.runs}
    if args.run not in runs:
        raise GridError(f"the grid has no run {args.run!r}; e.g. {', '.join(list(runs)[:3])}")
    results_dir = (args.results_dir or ROOT / "results" / grid.name).resolve()
    paths = Paths(
        results_dir=results_dir / "hpo" / args.run,
        work_dir=(args.work_dir or ROOT / "runs/experiments" / grid.name).resolve(),
        data_dir=args.data_dir.resolve(),
    )
    objectives = args.objective or ["forces_mae"]
    space = SearchSpace(tuple(args.c_pitc), tuple(args.c_pisc), tuple(args.max_displacement))
    options = Options(device=args.device, progress=not args.no_progress)
    study = search(runs[args.run], paths, options, space, objectives, args.trials, args.seed)
    rows = trial_rows(study, objectives)
    if not rows:
        return "no trial completed"
    title = f"Optuna search for {args.run}: validation {', '.join(objectives)} (kcal/mol, kcal/mol/Å)"
    return write_table(rows, paths.results_dir / "trials", title, "pareto: on the Pareto front of the objectives.")


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        print(run(args))
    except (GridError, HPOError, RunFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
