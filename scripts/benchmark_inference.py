#!/usr/bin/env python
"""Inference cost of trained models: time to predict energies and forces of a batch, per checkpoint.

Direct-force models predict forces with a head in one forward pass; gradient-force models need a
backward pass through the energy (F = -dE/dr). This command loads each checkpoint as
``scripts/evaluate.py`` does, predicts the same batch of structures with each model in turn
(round-robin, so that machine noise hits all alike) and reports the median and minimum time per
batch and per structure, as a table and JSON.

Example:
  OMP_NUM_THREADS=1 python scripts/benchmark_inference.py --data datasets/experiments/aspirin-n100-s0/test \\
      --model direct=runs/.../best_checkpoint.pt --model gradient=runs/.../best_checkpoint.pt --json inference.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from piwsl.jsonfiles import write_json_atomic


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared LMDB split directory")
    parser.add_argument(
        "--model", action="append", required=True, metavar="LABEL=CHECKPOINT", help="a checkpoint to time (repeatable)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="structures per prediction (default 8)")
    parser.add_argument("--repeats", type=int, default=30, help="timed predictions per model (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed predictions per model first (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return parser


def parse_models(specs: list[str]) -> dict[str, Path]:
    models = {}
    for spec in specs:
        label, separator, path = spec.partition("=")
        if not separator or not label or not path:
            raise SystemExit(f"error: --model {spec!r}: expected LABEL=CHECKPOINT")
        if not Path(path).is_file():
            raise SystemExit(f"error: --model {label}: checkpoint not found: {path}")
        models[label] = Path(path)
    return models


def predict(trainer, batch) -> float:
    """Seconds for one prediction of energies and forces of ``batch``."""
    gradient = not getattr(trainer._unwrapped_model, "direct_forces", False)
    start = time.perf_counter()
    with torch.enable_grad() if gradient else torch.no_grad():
        out = trainer._forward(batch.clone())
        out["forces"].detach()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    from fairchem.core.datasets import LmdbDataset, data_list_collater

    from piwsl.evaluate import load_trainer

    models = parse_models(args.model)
    dataset = LmdbDataset({"src": str(args.data)})
    batch = data_list_collater([dataset[i] for i in range(min(args.batch_size, len(dataset)))], otf_graph=True)
    trainers = {label: load_trainer(path) for label, path in models.items()}
    for trainer in trainers.values():
        trainer.model.eval()
    times: dict[str, list[float]] = {label: [] for label in trainers}
    for repeat in range(args.warmup + args.repeats):
        for label, trainer in trainers.items():
            elapsed = predict(trainer, batch)
            if repeat >= args.warmup:
                times[label].append(elapsed)
    structures = int(batch.natoms.numel())
    rows = [
        {
            "model": label,
            "checkpoint": str(models[label]),
            "forces": "direct" if getattr(trainers[label]._unwrapped_model, "direct_forces", False) else "gradient",
            "median_ms_per_batch": 1e3 * statistics.median(values),
            "min_ms_per_batch": 1e3 * min(values),
            "median_ms_per_structure": 1e3 * statistics.median(values) / structures,
        }
        for label, values in times.items()
    ]
    summary = {
        "data": str(args.data),
        "structures_per_batch": structures,
        "atoms_per_batch": int(batch.natoms.sum()),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "rows": rows,
    }
    print(f"{structures} structures ({summary['atoms_per_batch']} atoms) per batch, {summary['threads']} thread(s)")
    print(f"{'model':>24s} {'forces':>9s} {'median ms/batch':>16s} {'min ms/batch':>13s} {'ms/structure':>13s}")
    for row in rows:
        print(
            f"{row['model']:>24s} {row['forces']:>9s} {row['median_ms_per_batch']:16.1f} "
            f"{row['min_ms_per_batch']:13.1f} {row['median_ms_per_structure']:13.2f}"
        )
    if args.json is not None:
        write_json_atomic(args.json, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    run(get_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
