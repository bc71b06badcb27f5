#!/usr/bin/env python
"""Label frames of an existing trajectory with DFT (PySCF): energies for training, energies and forces for testing.

Reads the frames of --src (any format prepare_data.py reads, e.g. an rMD17 or sGDML npz from
generate_reference_data.py), draws --test-frames then --train-frames distinct frames with a seeded
permutation, and computes Kohn-Sham energies (and forces for the test frames) at --functional /
--basis. Writes into --out:
  train.npz        sGDML layout: z, R (Angstrom), E (kcal/mol), source_frames, name, theory
  test.npz         the same with F (kcal/mol/Angstrom)
  provenance.json  PySCF version, level of theory, source file and SHA-256, frame indices, command, timings
  progress.jsonl   one line per finished frame; a killed run resumes from it (rerun the same command)

--extend adds training frames to a finished set: with the same --src, level, --seed and --test-frames,
--train-frames M > the stored count labels the next frames of the same permutation and rewrites the
sets (the stored frames, labels and test set unchanged; the earlier runs' provenance under "history").

Both npz files prepare with scripts/prepare_data.py sgdml (train.npz with --force-key none).
Run with OMP_NUM_THREADS=1; --workers N labels N frames at a time.

Example (the committed set, ~3-12 s per ethanol frame on one core):
  OMP_NUM_THREADS=1 python scripts/generate_dft_data.py rmd17 --src data/rmd17_ethanol_gfn2xtb_500K.npz \\
      --out data/dft/ethanol_wb97x_631gs --train-frames 120 --test-frames 30
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from piwsl.data.formats import FORMATS, open_source
from piwsl.data.prepare import file_checksum
from piwsl.data.validation import DataFormatError
from piwsl.datagen.dft import (
    PROGRESS_FILE,
    PROVENANCE_FILE,
    TEST_FILE,
    TRAIN_FILE,
    DftError,
    DftLevel,
    check_level,
    finished_labels,
    label_frames,
    plan_frames,
    write_sets,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(FORMATS), help="format of --src (as for prepare_data.py)")
    parser.add_argument("--src", type=Path, required=True, help="trajectory whose frames are labelled (one molecule)")
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory (created; resumed if it has progress)"
    )
    parser.add_argument("--train-frames", type=int, required=True, help="frames labelled with energies only")
    parser.add_argument("--test-frames", type=int, required=True, help="frames labelled with energies and forces")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame permutation (default 0)")
    parser.add_argument("--functional", default="wb97x", help="libxc functional name (default wb97x, ANI-1x's)")
    parser.add_argument("--basis", default="6-31g*", help="basis set (default 6-31g*; rMD17 used pbe/def2-svp)")
    parser.add_argument("--charge", type=int, default=0, help="total charge in e (default 0)")
    parser.add_argument("--spin", type=int, default=0, help="unpaired electrons 2S (default 0; > 0 uses UKS)")
    parser.add_argument(
        "--density-fit", action="store_true", help="density fitting: about 2x faster, ~0.1 kcal/mol from exact"
    )
    parser.add_argument("--grid-level", type=int, default=3, help="PySCF integration grid level 0-9 (default 3)")
    parser.add_argument("--conv-tol", type=float, default=1e-9, help="SCF convergence threshold, Hartree (1e-9)")
    parser.add_argument("--workers", type=int, default=1, help="frames labelled at a time, one process each (1)")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="add training frames to the finished set in --out (same --src, level, --seed and --test-frames); "
        "its labels are kept, the new frames are the next ones of the same permutation",
    )
    parser.add_argument("--name", default=None, help="molecule name stored in the npz files (default: --src's stem)")
    return parser


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Label the frames described by ``args`` and write the sets; return the provenance record."""
    finished = [args.out / name for name in (TRAIN_FILE, TEST_FILE) if (args.out / name).exists()]
    if finished and not args.extend:
        raise DftError(
            f"{finished[0]} exists: this set is complete; choose another --out, or --extend to add training frames"
        )
    if args.workers < 1:
        raise DftError(f"--workers must be >= 1, got {args.workers}")
    level = DftLevel(
        args.functional, args.basis, args.charge, args.spin, args.density_fit, args.grid_level, args.conv_tol
    )
    source = open_source(args.format, args.src)
    plan = plan_frames(source.count(), args.train_frames, args.test_frames, args.seed)
    wanted = np.zeros(source.count(), dtype=bool)
    wanted[np.concatenate([plan.train, plan.test]).astype(np.int64)] = True
    numbers, positions = None, {}
    for index, structure in source.records(wanted):
        if numbers is None:
            numbers = structure.numbers
        elif not np.array_equal(numbers, structure.numbers):
            raise DftError(f"{structure.source}: other atoms than the first frame; one molecule per file")
        positions[index] = structure.positions
    if numbers is None:
        raise DftError("no frames requested: --train-frames and --test-frames are both 0")
    check_level(level, numbers)
    header = {"level": asdict(level), "source_sha256": file_checksum(args.src), "format": args.format}
    known, earlier = {}, None
    if args.extend:
        expected = {"level": header["level"], "source_sha256": header["source_sha256"]}
        expected |= {"source_format": args.format, "seed": args.seed}
        known, earlier = finished_labels(args.out, plan, positions, expected)
    start = time.perf_counter()
    labels = label_frames(numbers, positions, plan, level, args.out / PROGRESS_FILE, header, args.workers, known=known)
    provenance = {
        "pyscf_version": version("pyscf"),
        "piwsl_version": _version("piwsl"),
        "source": str(args.src),
        "source_sha256": header["source_sha256"],
        "source_format": args.format,
        "seed": args.seed,
        "command": "python scripts/generate_dft_data.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "wall_seconds_last_run": round(time.perf_counter() - start, 1),
    }
    if earlier is not None:  # the runs that labelled the frames taken over, oldest first
        history = earlier.pop("history", [])
        earlier.pop("source_frames", None)
        provenance["history"] = [*history, earlier]
    name = args.name or (_stored_name(args.out / TRAIN_FILE) if args.extend else None) or args.src.stem
    record = write_sets(args.out, numbers, positions, plan, labels, name, level, provenance)
    (args.out / PROGRESS_FILE).unlink()
    print(
        f"wrote {args.out}: {len(plan.train)} training energies, {len(plan.test)} test energies+forces at "
        f"{level.theory()}; {record['label_seconds']['mean']} s per frame; provenance in {PROVENANCE_FILE}"
    )
    return record


def _stored_name(path: Path) -> str:
    """The molecule name of an sGDML npz written by this script."""
    with np.load(path) as archive:
        return str(archive["name"])


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        run(args, argv)
    except (DftError, DataFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
