#!/usr/bin/env python
"""Learning curves of a run: every logged term (losses, metrics, learning rate), training and validation.

Example: python scripts/plot_learning_curves.py runs/demo/piwsl --out piwsl_curves.png
(main.py draws the same figure into the run's logs directory at the end of training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "run", type=Path, help="a run's tensorboard logs directory, or a run directory holding exactly one"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG to write (default: learning_curves.png in the logs dir)"
    )
    parser.add_argument("--title", default="", help="figure title")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    from piwsl.plots import find_logs_dir, plot_learning_curves

    try:
        logs = find_logs_dir(args.run)
        path = plot_learning_curves(logs, args.out or logs / "learning_curves.png", args.title)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
