"""MD stability: NVE or Langevin dynamics with each model; energy drift and time to failure.

Starts from a structure (default: frame 0 of the bundled aspirin MD), draws velocities at
--temperature (one seed per replica) and integrates with piwsl.calculator.PIWSLCalculator for
--steps steps of --timestep fs. A replica fails at the first step with non-finite predictions, a
bond of the starting structure stretched beyond --bond-factor times its length, or two atoms
closer than --min-distance Å (piwsl/experiments/md.py). Reported per model over the replicas:
failures, time to failure (fs; mean over failed replicas), simulated time, and for NVE the drift
of the total energy (kcal/mol/ps, least-squares slope) and its standard deviation (kcal/mol).

Writes OUT/md_stability.md|.csv and OUT/md_stability.png (total energy, or for Langevin the
potential energy, of the first replica vs time).

Example:
  python scripts/diagnostics/md_stability.py --ensemble nve --steps 2000 --replicas 3 \\
      --model 'Baseline=results/cpu_study/runs/aspirin-painn-baseline-n100-s0.json' \\
      --model 'PIWSL=results/cpu_study/runs/aspirin-painn-piwsl-n100-s0.json' --out results/cpu_study/diagnostics
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from piwsl.experiments.diagnostics import display, load_structures, parse_models, write_table
from piwsl.experiments.grid import ROOT
from piwsl.experiments.md import run_md


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", action="append", required=True, help="LABEL=PATH: a checkpoint or a run's results JSON; repeatable"
    )
    parser.add_argument(
        "--structure",
        type=Path,
        default=ROOT / "data/rmd17_aspirin_gfn2xtb_500K.npz",
        help="an rMD17 .npz, a prepared LMDB split or an ASE file (default: the bundled aspirin)",
    )
    parser.add_argument("--frame", type=int, default=0, help="index of the start structure in --structure")
    parser.add_argument(
        "--ensemble", choices=["nve", "langevin"], default="nve", help="NVE (velocity Verlet) or Langevin"
    )
    parser.add_argument(
        "--temperature", type=float, default=500.0, help="initial / bath temperature in K (default 500)"
    )
    parser.add_argument("--timestep", type=float, default=0.5, help="time step in fs (default 0.5)")
    parser.add_argument("--steps", type=int, default=2000, help="MD steps per replica (default 2000)")
    parser.add_argument("--replicas", type=int, default=3, help="replicas with different velocity seeds (default 3)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs (default 0.01)")
    parser.add_argument("--bond-factor", type=float, default=1.5, help="bond breaking: length > factor x start length")
    parser.add_argument("--min-distance", type=float, default=0.6, help="collapse: two atoms closer than this, Å")
    parser.add_argument("--out", type=Path, default=Path("results/diagnostics"), help="output directory")
    return parser


def run(args: argparse.Namespace) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from piwsl.calculator import PIWSLCalculator

    (atoms,) = load_structures(args.structure, [args.frame])
    figure, axis = plt.subplots(figsize=(7, 4))
    rows = []
    for label, checkpoints in parse_models(args.model).items():
        calculator = PIWSLCalculator(checkpoints[0])
        trajectories = []
        for replica in tqdm(range(args.replicas), desc=label):
            trajectories.append(
                run_md(
                    atoms,
                    calculator,
                    args.ensemble,
                    args.temperature,
                    args.timestep,
                    args.steps,
                    seed=replica,
                    friction=args.friction,
                    bond_factor=args.bond_factor,
                    min_distance=args.min_distance,
                )
            )
        failed = [t for t in trajectories if t.failed]
        simulated = [t.time_to_failure if t.failed else args.steps * args.timestep for t in trajectories]
        row = {
            "model": label,
            "failed": f"{len(failed)}/{len(trajectories)}",
            "time to failure (fs)": f"{np.mean([t.time_to_failure for t in failed]):.0f}" if failed else "—",
            "simulated (fs)": f"{np.mean(simulated):.0f}",
        }
        if args.ensemble == "nve":
            drifts = [t.drift() for t in trajectories]
            spread = [float(np.std(t.total)) for t in trajectories if len(t.total)]
            row["drift (kcal/mol/ps)"] = f"{np.nanmean(drifts):+.2f} ± {np.nanstd(drifts):.2f}"
            row["E_tot std (kcal/mol)"] = f"{np.mean(spread):.3f}"
        if failed:
            row["first failure"] = failed[0].reason
        rows.append(row)
        first = trajectories[0]
        energy = first.total - first.total[0] if args.ensemble == "nve" else first.potential - first.potential[0]
        axis.plot(
            first.times, energy, label=label + (f" (failed at {first.time_to_failure:.0f} fs)" if first.failed else "")
        )
    quantity = "E_tot − E_tot(0)" if args.ensemble == "nve" else "E_pot − E_pot(0)"
    axis.set_xlabel("time (fs)")
    axis.set_ylabel(f"{quantity} (kcal/mol)")
    axis.set_title(f"{args.ensemble.upper()} MD at {args.temperature:.0f} K, dt {args.timestep} fs (replica 0)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out / "md_stability.png", dpi=130)
    plt.close(figure)
    title = (
        f"{args.ensemble.upper()} MD from {display(args.structure)} frame {args.frame}: {args.temperature:.0f} K, "
        f"{args.steps} x {args.timestep} fs, {args.replicas} replicas"
    )
    for row in rows:
        row.setdefault("first failure", "")
    return write_table(rows, args.out / "md_stability", title)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        print(run(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
