#!/usr/bin/env python
"""Benchmark ANI-1x preparation: throughput and peak memory on synthetic files of growing size.

Writes synthetic files in the ANI-1x release layout (groups per formula of 4-32 H/C/N/O atoms,
float32 coordinates and forces, float64 energies in Ha near the free-atom energies, 0.1 % of the
energies NaN as in the release), then runs ``scripts/prepare_data.py ani1x`` on each in a fresh
process and reads that process's peak RSS from the kernel (``os.wait4``). Memory is flat when the
peak RSS does not grow with the file size or with the number of structures written. Throughput
is structures written per second of the CLI's ``run()`` (index pass, self-energy fit, writing,
checksum; interpreter start-up and imports excluded); indexing alone is timed separately. The
labels are random: this measures the converter, not chemistry.

  OMP_NUM_THREADS=1 python scripts/benchmark_prepare.py --sizes 100000 300000 --json runs/benchmark_prepare.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PREPARE = ROOT / "scripts/prepare_data.py"
#: Free-atom energies (Ha) the synthetic energies are built from, and element frequencies.
ATOM_ENERGY_HARTREE = {1: -0.5, 6: -37.8, 7: -54.6, 8: -75.0}
ELEMENT_WEIGHTS = {1: 0.5, 6: 0.3, 7: 0.1, 8: 0.1}
#: Child process: load the CLI, then time its ``run`` alone (imports excluded) and print the seconds.
PREPARE_CODE = (
    "import importlib.util, time; "
    "spec = importlib.util.spec_from_file_location('prepare_data', {script!r}); "
    "cli = importlib.util.module_from_spec(spec); spec.loader.exec_module(cli); "
    "args = cli.get_parser().parse_args({argv!r}); "
    "start = time.perf_counter(); cli.run(args); print(time.perf_counter() - start)"
)


def write_synthetic_ani1x(path: Path, conformers: int, seed: int, per_formula: int = 1000) -> None:
    """An ANI-1x-layout HDF5 with ``conformers`` conformers in groups of ``per_formula``."""
    rng = np.random.default_rng(seed)
    elements = np.array(list(ELEMENT_WEIGHTS))
    weights = np.array(list(ELEMENT_WEIGHTS.values()))
    with h5py.File(path, "w") as h5:
        for index, start in enumerate(range(0, conformers, per_formula)):
            count = min(per_formula, conformers - start)
            numbers = np.sort(rng.choice(elements, size=int(rng.integers(4, 33)), p=weights))
            base = sum(ATOM_ENERGY_HARTREE[int(z)] for z in numbers)
            energies = base - 0.1 * numbers.size + 0.01 * rng.standard_normal(count)
            energies[rng.random(count) < 0.001] = np.nan
            group = h5.create_group(f"F{index:06d}")
            group.create_dataset("atomic_numbers", data=numbers.astype(np.uint8))
            coordinates = rng.normal(scale=2.0, size=(count, numbers.size, 3)).astype(np.float32)
            group.create_dataset("coordinates", data=coordinates)
            group.create_dataset("wb97x_dz.energy", data=energies)
            forces = rng.normal(scale=0.02, size=(count, numbers.size, 3)).astype(np.float32)
            group.create_dataset("wb97x_dz.forces", data=forces)


def measure(command: list[str]) -> dict:
    """Run ``command``; return its wall time (s), peak RSS (MiB) and last stdout line."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    lines = stdout.strip().splitlines()
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "output": lines[-1] if lines else ""}


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def benchmark(sizes: list[int], train_size: int, workdir: Path, seed: int) -> dict:
    """Import baseline, then per size: synthetic file, indexing alone, and the full preparation."""
    baseline = measure(python("import piwsl.data.prepare, piwsl.data.formats"))
    rows = []
    for size in sizes:
        source = workdir / f"synthetic_{size}.h5"
        write_synthetic_ani1x(source, size, seed)
        index_code = (
            "import json, time; from piwsl.data.ani1x import Ani1xSource; t = time.perf_counter(); "
            f"n = Ani1xSource({str(source)!r}).count(); print(json.dumps([n, time.perf_counter() - t]))"
        )
        indexed = measure(python(index_code))
        usable, index_seconds = json.loads(indexed["output"])
        runs = {"paper splits": None, "everything written": usable - 2 * train_size}
        for label, test_size in runs.items():
            out = workdir / f"out_{size}"
            argv = ["ani1x", "--src", str(source), "--out", str(out), "--train-size", str(train_size)]
            argv += ["--seed", str(seed)] + ([] if test_size is None else ["--test-size", str(test_size)])
            result = measure(python(PREPARE_CODE.format(script=str(PREPARE), argv=argv)))
            seconds = float(result["output"])
            metadata = json.loads((out / "metadata.json").read_text())
            written = sum(metadata["split_sizes"].values())
            rows.append(
                {
                    "conformers_in_file": size,
                    "file_mib": source.stat().st_size / 2**20,
                    "run": label,
                    "usable_conformers": usable,
                    "structures_written": written,
                    "index_conformers_per_s": usable / index_seconds,
                    "wall_s": result["wall_s"],
                    "prepare_s": seconds,
                    "structures_per_s": written / seconds,
                    "peak_rss_mib": result["peak_rss_mib"],
                    "peak_rss_above_imports_mib": result["peak_rss_mib"] - baseline["peak_rss_mib"],
                }
            )
        source.unlink()
    return {
        "command": "python scripts/prepare_data.py ani1x --src SYNTHETIC.h5 --out OUT --train-size "
        f"{train_size} --seed {seed} [--test-size ALL]",
        "import_baseline": {"wall_s": baseline["wall_s"], "peak_rss_mib": baseline["peak_rss_mib"]},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": rows,
    }


def table(results: dict) -> str:
    header = f"{'conformers':>10} {'file MiB':>8} {'run':<19} {'written':>8} {'index/s':>9} {'prep s':>7} "
    header += f"{'struct/s':>8} {'peak RSS MiB':>12} {'above imports':>13}"
    lines = [header]
    for row in results["rows"]:
        lines.append(
            f"{row['conformers_in_file']:>10} {row['file_mib']:>8.0f} {row['run']:<19} {row['structures_written']:>8} "
            f"{row['index_conformers_per_s']:>9.0f} {row['prepare_s']:>7.1f} {row['structures_per_s']:>8.0f} "
            f"{row['peak_rss_mib']:>12.0f} {row['peak_rss_above_imports_mib']:>13.0f}"
        )
    base = results["import_baseline"]
    lines.append(f"imports alone: {base['wall_s']:.1f} s, peak RSS {base['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000, 300_000], help="conformers per synthetic file"
    )
    parser.add_argument("--train-size", type=int, default=1000, help="N_train of every run (validation the same)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of the splits")
    parser.add_argument("--workdir", type=Path, default=None, help="where files go (default: a temporary directory)")
    parser.add_argument("--json", type=Path, default=ROOT / "runs/benchmark_prepare.json", help="results file to write")
    return parser


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        results = benchmark(args.sizes, args.train_size, Path(workdir), args.seed)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"wrote {args.json}")
    return results


def main(argv: list[str] | None = None) -> int:
    run(get_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
