#!/usr/bin/env python
"""Run the studies of a grid file: datasets x backbones x methods x N_train x seeds.

Each run's data split is prepared once (scripts/prepare_data.py), its config composed from the
repository configs plus the grid's overrides, trained with main.py in a subprocess, and its
best-validation checkpoint evaluated on the test split; RESULTS/runs/<run>.json holds the config
hash, seed, steps, wall time and test errors. Rerunning the command skips finished runs and
resumes interrupted ones from their last checkpoint. With --launcher slurm the unfinished runs go
to SLURM as one submitit array job (splits are prepared here first).

Prepared splits (DATA_DIR/<dataset>-n<N>-s<split seed>) are never overwritten: a split that holds
other data than the grid asks for (source, checksum, sizes, arguments) is an error; give such a
grid a --data-dir of its own. Locally, Ctrl+C or SIGTERM stop the training at a step boundary with
a checkpoint (a second one kills it); a run another runner is training is skipped with an error.

Examples:
  python scripts/run_experiments.py --grid experiments/grids/cpu_study.yml --list
  python scripts/run_experiments.py --grid experiments/grids/cpu_study.yml --only 'aspirin-painn-*-n100-*'
  python scripts/run_experiments.py --grid experiments/grids/paper_table1_ani1x.yml --launcher slurm \\
      --slurm-partition gpu --slurm-timeout 24
Then: python scripts/aggregate.py results/<grid name>
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from piwsl.experiments.grid import ROOT, Grid, GridError, RunSpec, load_grid
from piwsl.experiments.runner import (
    Options,
    Paths,
    RunFailed,
    SlurmOptions,
    run_locally,
    run_status,
    submit_slurm,
    write_grid_description,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grid", type=Path, required=True, help="grid file (YAML), e.g. experiments/grids/cpu_study.yml"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where runs/<run>.json and grid.json go (default: results/<grid>)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="checkpoints, logs and generated configs (default: runs/experiments/<grid>)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "datasets/experiments", help="prepared splits (default: %(default)s)"
    )
    parser.add_argument("--study", action="append", default=None, help="run only this study (repeatable)")
    parser.add_argument(
        "--only", action="append", default=None, help="run only runs whose name matches this glob (repeatable)"
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the runs and their status (done/partial/todo); runs nothing and writes nothing",
    )
    parser.add_argument("--prepare-only", action="store_true", help="prepare the data splits of the runs and stop")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="training/evaluation device (auto: cuda if any)",
    )
    parser.add_argument("--eval-batch-size", type=int, default=32, help="structures per forward pass in the test")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--launcher", choices=["local", "slurm"], default="local", help="run here one after another, or submit to SLURM"
    )
    slurm = parser.add_argument_group("SLURM (with --launcher slurm; one array task per run)")
    slurm.add_argument("--slurm-partition", default=None, help="partition")
    slurm.add_argument("--slurm-account", default=None, help="account")
    slurm.add_argument("--slurm-qos", default=None, help="quality of service")
    slurm.add_argument("--slurm-timeout", type=float, default=24.0, help="time limit per run in hours (default 24)")
    slurm.add_argument("--slurm-mem", type=float, default=32.0, help="memory per run in GB (default 32)")
    slurm.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per run (default 1)")
    slurm.add_argument("--slurm-cpus", type=int, default=8, help="CPU cores per run (default 8)")
    slurm.add_argument("--slurm-array-parallelism", type=int, default=64, help="array tasks running at once")
    slurm.add_argument("--slurm-max-requeues", type=int, default=3, help="requeues after pre-emption or timeout")
    slurm.add_argument("--slurm-log-dir", type=Path, default=None, help="submitit logs (default: WORK_DIR/slurm)")
    return parser


def selected(runs: list[RunSpec], studies: list[str] | None, patterns: list[str] | None, grid: Grid) -> list[RunSpec]:
    """The runs of the named studies whose names match one of the glob patterns (all when not given)."""
    if studies:
        unknown = sorted(set(studies) - set(grid.study_runs))
        if unknown:
            raise GridError(f"unknown --study {unknown}; the grid has {sorted(grid.study_runs)}")
        names = {name for study in studies for name in grid.study_runs[study]}
        runs = [run for run in runs if run.name in names]
    if patterns:
        runs = [run for run in runs if any(fnmatch.fnmatch(run.name, pattern) for pattern in patterns)]
    return runs


def run(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid)
    paths = Paths(
        results_dir=(args.results_dir or ROOT / "results" / grid.name).resolve(),
        work_dir=(args.work_dir or ROOT / "runs/experiments" / grid.name).resolve(),
        data_dir=args.data_dir.resolve(),
    )
    runs = selected(list(grid.runs), args.study, args.only, grid)
    options = Options(device=args.device, eval_batch_size=args.eval_batch_size, progress=not args.no_progress)
    if args.list:
        for spec in runs:
            try:
                status = run_status(spec, paths)
            except RunFailed as error:
                status = f"error ({error})"
            if status == "waiting":
                status = f"waiting (fine-tunes from {spec.pretrained.name}, not finished)"
            print(f"{spec.name:50s} {status}")
        return 0
    if args.prepare_only:
        from piwsl.experiments.runner import prepare_split

        for spec in runs:
            print(f"prepared {prepare_split(spec, paths)}")
        return 0
    write_grid_description(grid, paths)
    if args.launcher == "slurm":
        slurm = SlurmOptions(
            partition=args.slurm_partition,
            account=args.slurm_account,
            qos=args.slurm_qos,
            timeout_h=args.slurm_timeout,
            mem_gb=args.slurm_mem,
            gpus=args.slurm_gpus,
            cpus=args.slurm_cpus,
            array_parallelism=args.slurm_array_parallelism,
            max_requeues=args.slurm_max_requeues,
            log_dir=args.slurm_log_dir or paths.work_dir / "slurm",
        )
        jobs = submit_slurm(runs, paths, options, slurm, grid.name)
        print(f"submitted {len(jobs)} run(s) as SLURM array tasks: {', '.join(jobs) or 'none (all done)'}")
        return 0
    failures = run_locally(runs, paths, options)
    write_grid_description(grid, paths)  # again: fine-tuning runs have a config hash once their pretraining is done
    print(f"{len(runs) - len(failures)} of {len(runs)} run(s) done; results in {paths.runs_dir}")
    for failure in failures:
        print(f"failed: {failure.splitlines()[0]}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except (GridError, RunFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
