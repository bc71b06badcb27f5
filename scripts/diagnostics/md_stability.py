"""MD stability: NVE or Langevin dynamics with each model; energy drift and time to failure.

Starts from a structure (default: frame 0 of the bundled aspirin MD), draws velocities at
--temperature (one seed per replica) and integrates with piwsl.calculator.PIWSLCalculator for
--steps steps of --timestep fs. A replica fails at the first step with non-finite predictions, a
bond of the starting structure stretched beyond --bond-factor times its length, or two atoms
closer than --min-distance Å (piwsl/experiments/md.py). Reported per model over the replicas,
as mean ± sample std (ddof = 1), marked (n=k) where fewer replicas than all have the value:
failures, time to failure (fs; over the failed replicas), simulated time, and for NVE the absolute
drift of the total energy (kcal/mol/ps, least-squares slope; also per atom), the number of
replicas too short for a drift (fewer than 3 recorded points), and the standard deviation of the
total energy in time (kcal/mol; mean over replicas).

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

from tqdm import tqdm

from piwsl.experiments.diagnostics import (
    diagnostic_main,
    diagnostic_parser,
    display,
    load_calculator,
    load_start_structure,
    parse_single_models,
    pyplot,
    write_table,
)
from piwsl.experiments.md import run_md, stability_row


def get_parser() -> argparse.ArgumentParser:
    parser = diagnostic_parser(__doc__, start_structure=True, several_checkpoints=False)
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
    return parser


def run(args: argparse.Namespace) -> str:
    models = parse_single_models(args.model)
    atoms = load_start_structure(args)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    rows = []
    for label, checkpoint in models.items():
        calculator = load_calculator(checkpoint, args.energy_unit)
        trajectories = [
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
            for replica in tqdm(range(args.replicas), desc=label)
        ]
        rows.append(
            {"model": label} | stability_row(trajectories, args.steps, args.timestep, len(atoms), args.ensemble)
        )
        first = trajectories[0]
        energy = first.total if args.ensemble == "nve" else first.potential
        failure = f" (failed at {first.time_to_failure:.0f} fs)" if first.failed else ""
        axis.plot(first.times, energy - energy[0] if len(energy) else energy, label=label + failure)
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
    return write_table(rows, args.out / "md_stability", title)


def main(argv: list[str] | None = None) -> int:
    return diagnostic_main(get_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
