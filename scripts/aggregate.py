#!/usr/bin/env python
"""Tables and figures of a results directory, in the layout of the paper's Tables 1-3 and Fig. 2a/b.

Reads RESULTS_DIR/runs/*.json (written by scripts/run_experiments.py) and RESULTS_DIR/grid.json.
Only the grid's runs count, and only results with the config hash grid.json gives the run: a
result of an older config (the grid changed since) is skipped and listed in a warning and at the
end of all.md. Results are grouped by data set, backbone, method, N_train and study tag. Prints
the tables as markdown and writes, under --out (default RESULTS_DIR):
  tables/<study>__<dataset>.md|.csv   test RMSE, mean ± sample std over seeds (Table 1/2/3 layout)
  tables/<study>__gains.md|.csv       per-seed relative gain over the study's reference method
  tables/<study>__<dataset>__<split>.md|.csv, tables/<study>__gains__<split>.md|.csv
                                      the same for each further test split the runs were tested on
                                      (test_conformations: unseen conformations of training molecules)
  tables/<study>__runtime.md|.csv     training wall time and steps per run
  tables/summary.csv                  every (dataset, backbone, method, N_train, tag): means, stds, seeds
  tables/all.md                       everything above in one file
  figures/gain_<study>__<dataset>.png relative energy (a) and force (b) RMSE gain vs N_train (Fig. 2a/b)

Example: python scripts/aggregate.py results/cpu_study
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from piwsl.experiments.aggregate import aggregate


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path, help="a results directory holding runs/*.json (and grid.json)")
    parser.add_argument("--out", type=Path, default=None, help="where tables/ and figures/ go (default: RESULTS_DIR)")
    parser.add_argument("--digits", type=int, default=2, help="decimals of the RMSE cells (default 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        print(aggregate(args.results_dir, args.out or args.results_dir, args.digits))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
