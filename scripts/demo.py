#!/usr/bin/env python
"""Demo: small PaiNN on 100 bundled aspirin structures (GFN2-xTB), with and without PIWSL.

Prepares the data once, trains both models with the same seed and the same number of steps (in
parallel, one CPU thread each), evaluates the best-validation checkpoints on the test split and
prints a table of test energy and force RMSE. Results go to ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "baseline": ROOT / "configs/demo/aspirin_painn_baseline.yml",
    "piwsl": ROOT / "configs/demo/aspirin_painn_piwsl.yml",
}
DATA_SOURCE = ROOT / "data/rmd17_aspirin_gfn2xtb_500K.npz"
STEP_PATTERN = re.compile(r"step: ([0-9.e+]+)")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per model (rounded up to epochs)")
    parser.add_argument("--train-size", type=int, default=100, help="training structures N_train")
    parser.add_argument("--test-size", type=int, default=1000, help="test structures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights and dr")
    parser.add_argument("--data", type=Path, default=ROOT / "datasets/aspirin_demo", help="prepared data directory")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/demo", help="run directory (logs, checkpoints)")
    parser.add_argument("--sequential", action="store_true", help="train one model after the other")
    parser.add_argument(
        "--piwsl-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the PIWSL run's piwsl section, e.g. max_displacement=0.05 (repeatable)",
    )
    return parser


def prepare_data(args: argparse.Namespace) -> None:
    metadata_file = args.data / "metadata.json"
    wanted = {"train": args.train_size, "val": max(args.train_size, 100), "test": args.test_size}
    if metadata_file.exists():
        metadata = json.loads(metadata_file.read_text())
        if metadata["split_sizes"] == wanted and metadata["seed"] == args.seed:
            return
    command = [
        sys.executable, str(ROOT / "scripts/prepare_data.py"), "rmd17", "--src", str(DATA_SOURCE),
        "--out", str(args.data), "--train-size", str(args.train_size), "--val-size", str(wanted["val"]),
        "--test-size", str(args.test_size), "--seed", str(args.seed), "--overwrite",
    ]  # fmt: skip
    subprocess.run(command, check=True)


def train_command(method: str, args: argparse.Namespace) -> list[str]:
    run_dir = args.out / method
    return [
        sys.executable, str(ROOT / "main.py"), "--mode", "train", "--config", str(METHODS[method]), "--cpu",
        "--run-dir", str(run_dir), "--identifier", f"demo-{method}", "--timestamp-id", f"{method}-seed{args.seed}",
        "--seed", str(args.seed), "--print-every", "25", f"--optim.max_steps={args.steps}",
        f"--dataset.train.src={args.data / 'train'}", f"--dataset.val.src={args.data / 'val'}",
    ] + ([f"--piwsl.{setting}" for setting in args.piwsl_set] if method == "piwsl" else [])  # fmt: skip


def train(methods: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Run the trainings as subprocesses with a progress bar each; return wall times in seconds."""
    processes, bars, logs, started, wall = {}, {}, {}, {}, {}
    for position, method in enumerate(methods):
        (args.out / method).mkdir(parents=True, exist_ok=True)
        logs[method] = args.out / method / "train.log"
        handle = open(logs[method], "w")
        started[method] = time.perf_counter()
        processes[method] = subprocess.Popen(train_command(method, args), stdout=handle, stderr=subprocess.STDOUT)
        bars[method] = tqdm(total=args.steps, desc=f"{method:8s}", position=position, unit="step")
    while processes:
        time.sleep(2)
        for method, process in list(processes.items()):
            steps = STEP_PATTERN.findall(logs[method].read_text())
            if steps:
                bars[method].n = min(int(float(steps[-1])), args.steps)
                bars[method].refresh()
            if process.poll() is not None:
                wall[method] = time.perf_counter() - started[method]
                bars[method].close()
                del processes[method]
                if process.returncode != 0:
                    tail = "".join(logs[method].read_text().splitlines(keepends=True)[-20:])
                    raise RuntimeError(f"training {method} failed (log: {logs[method]}):\n{tail}")
    return wall


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    args.out = args.out.resolve()
    args.data = args.data.resolve()
    prepare_data(args)
    from piwsl.evaluate import evaluate_checkpoint

    methods = list(METHODS)
    wall = {}
    for group in [[m] for m in methods] if args.sequential else [methods]:
        wall.update(train(group, args))
    results = {}
    for method in methods:
        checkpoint = args.out / method / "checkpoints" / f"{method}-seed{args.seed}" / "best_checkpoint.pt"
        results[method] = evaluate_checkpoint(checkpoint, args.data / "test") | {"train_wall_s": wall[method]}
    summary = {"steps": args.steps, "train_size": args.train_size, "seed": args.seed, "results": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\nTest errors on {results['baseline']['num_structures']} aspirin structures (GFN2-xTB), "
        f"small PaiNN, N_train={args.train_size}, {args.steps} steps, seed {args.seed}:"
    )
    print(f"{'method':10s} {'E RMSE (kcal/mol)':>18s} {'F RMSE (kcal/mol/Å)':>20s} {'train time (s)':>15s}")
    for method, r in results.items():
        print(f"{method:10s} {r['energy_rmse']:18.3f} {r['forces_rmse']:20.3f} {r['train_wall_s']:15.0f}")
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
