#!/usr/bin/env python
"""Print (and optionally write) the markdown table of ``scripts/benchmark_step.py`` result files.

Example: python scripts/benchmark_table.py results/benchmarks/step_*.json --out results/benchmarks/table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADER = (
    "| model | forces | settings | threads | device | supervised (ms) | PIWSL sequential (ms) | PIWSL batched (ms) "
    "| sequential / supervised | batched / supervised | batched / sequential | activations MB (sup. / PIWSL) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="JSON files written by benchmark_step.py --json")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    return parser


def rows(summary: dict) -> list[str]:
    """One table row per device of one benchmark_step.py result."""
    settings = summary.get("piwsl_settings") or {}
    described = ", ".join(f"{key} {value}" for key, value in settings.items()) or "defaults"
    lines = []
    for result in summary["results"]:
        variants, ratios = result["variants"], result["ratios"]
        milliseconds = [
            1000 * variants[name]["median_step_s"] for name in ("supervised", "piwsl_sequential", "piwsl_batched")
        ]
        activations = [variants[name]["saved_activations_mb"] for name in ("supervised", "piwsl_batched")]
        memory = " / ".join(f"{value:.0f}" for value in activations)
        lines.append(
            f"| {summary['model']} | {summary['force_mode']} | {described} | {summary['threads']} "
            f"| {result['device']} | "
            + " | ".join(f"{value:.0f}" for value in milliseconds)
            + f" | {ratios['piwsl_sequential/supervised']:.2f} | {ratios['piwsl_batched/supervised']:.2f} "
            f"| {ratios['batched/sequential']:.2f} | {memory} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    lines = [HEADER]
    for path in args.files:
        try:
            summary = json.loads(path.read_text())
            lines += rows(summary)
        except (OSError, json.JSONDecodeError, KeyError) as error:
            print(f"error: {path} is not a benchmark_step.py result ({error!r})", file=sys.stderr)
            return 2
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.out is not None:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
