"""Bond scan (Sec. 5.3, App. F, Fig. 2c/d): energy vs one bond length, models against GFN2-xTB.

Takes a structure (default: frame 0 of the bundled aspirin MD, relaxed with GFN2-xTB), stretches
one bond (default: the first C-H bond) by moving its second atom along the bond, every other atom
fixed, over --range (App. F: 0.8-1.8 Å, 101 points), and predicts the energy with each model and
with the reference GFN2-xTB (tblite; the method the bundled data were labelled with). Energies
are relative to each curve's value at the starting bond length. Arrows: the first-order Taylor
estimate from a model's own forces, from (d, E(d)) to (d + δ, E(d) - δ F_H·u) (--arrow-length
δ; the paper's 0.01 Å is drawn longer for visibility, the direction is the same): an arrow along
the curve means energy and forces agree.

Writes OUT/bond_scan.png, OUT/bond_scan.csv (all curves) and OUT/bond_scan_errors.md|.csv
(per model: energy and slope RMSE vs the reference over the scan, and the force/energy
self-consistency of the model's own curve).

Example:
  python scripts/diagnostics/bond_scan.py --out results/cpu_study/diagnostics \\
      --model 'Baseline=results/cpu_study/runs/aspirin-painn-baseline-n100-s0.json' \\
      --model 'PIWSL=results/cpu_study/runs/aspirin-painn-piwsl-n100-s0.json'
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from piwsl.experiments.bond_scan import find_bond, gfn2_predictor, relax_gfn2, scan, scan_errors
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


def get_parser() -> argparse.ArgumentParser:
    parser = diagnostic_parser(__doc__, start_structure=True, several_checkpoints=False)
    parser.add_argument("--no-relax", action="store_true", help="scan the frame as it is, not relaxed with GFN2-xTB")
    parser.add_argument(
        "--bond",
        type=int,
        nargs=2,
        default=None,
        metavar=("ANCHOR", "MOVING"),
        help="atom indices (default: first C-H)",
    )
    parser.add_argument(
        "--range", type=float, nargs=2, default=(0.8, 1.8), metavar=("MIN", "MAX"), help="bond lengths in Å"
    )
    parser.add_argument("--points", type=int, default=101, help="scan points (default 101)")
    parser.add_argument("--arrows", type=int, default=9, help="Taylor arrows per model curve (default 9)")
    parser.add_argument("--arrow-length", type=float, default=0.05, help="δ of the Taylor arrows in Å (default 0.05)")
    parser.add_argument("--no-reference", action="store_true", help="skip the GFN2-xTB reference curve")
    return parser


def plot(curves: dict, args: argparse.Namespace, bond_label: str, start: float, path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, curve) in enumerate(curves.items()):
        reference = label == "GFN2-xTB"
        colour = "black" if reference else colours[k % len(colours)]
        axis.plot(curve.distances, curve.energies, color=colour, linewidth=2 if reference else 1.5, label=label)
        if reference:
            continue
        for i in np.linspace(0, len(curve.distances) - 1, args.arrows).round().astype(int):
            d, e = curve.distances[i], curve.energies[i]
            axis.annotate(
                "",
                xy=(d + args.arrow_length, e + args.arrow_length * curve.slopes[i]),
                xytext=(d, e),
                arrowprops={"arrowstyle": "-|>", "color": colour, "linewidth": 1.5, "mutation_scale": 12},
            )
    axis.axvline(start, color="0.6", linestyle=":", linewidth=1)
    axis.set_xlabel(f"{bond_label} bond length (Å)")
    axis.set_ylabel("E − E(start) (kcal/mol)")
    axis.set_title(f"{bond_label} bond scan; arrows: E(d) − δ·F·u, δ = {args.arrow_length} Å")
    references = [c.energies for label, c in curves.items() if label == "GFN2-xTB"]
    if references:
        low, high = float(np.min(references)), float(np.max(references))
        axis.set_ylim(low - 0.1 * (high - low) - 5, high + 0.5 * (high - low) + 5)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def run(args: argparse.Namespace) -> str:
    models = parse_single_models(args.model)
    atoms = load_start_structure(args)
    if not args.no_relax:
        atoms = relax_gfn2(atoms)
    anchor, moving = args.bond if args.bond else find_bond(atoms)
    start = float(np.linalg.norm(atoms.positions[moving] - atoms.positions[anchor]))
    distances = np.linspace(*args.range, args.points)
    curves = {}
    if not args.no_reference:
        curves["GFN2-xTB"] = scan(gfn2_predictor(), atoms, anchor, moving, distances, start)
    for label, checkpoint in models.items():
        calculator = load_calculator(checkpoint, args.energy_unit)
        curves[label] = scan(lambda s, c=calculator: _stacked(c.predict(s)), atoms, anchor, moving, distances, start)
    symbols = atoms.get_chemical_symbols()
    bond_label = f"{symbols[anchor]}{anchor}-{symbols[moving]}{moving}"
    args.out.mkdir(parents=True, exist_ok=True)
    plot(curves, args, bond_label, start, args.out / "bond_scan.png")
    with open(args.out / "bond_scan.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["distance_A"] + [f"{label} {q}" for label in curves for q in ("dE_kcal_mol", "slope_kcal_mol_A")]
        )
        for i, d in enumerate(distances):
            writer.writerow([f"{d:.4f}"] + [f"{v:.4f}" for c in curves.values() for v in (c.energies[i], c.slopes[i])])
    if "GFN2-xTB" not in curves:
        return f"wrote {display(args.out / 'bond_scan.png')}"
    rows = []
    for label, curve in curves.items():
        if label == "GFN2-xTB":
            continue
        errors = scan_errors(curve, curves["GFN2-xTB"])
        rows.append(
            {
                "model": label,
                "E RMSE vs GFN2-xTB (kcal/mol)": f"{errors['energy_rmse']:.2f}",
                "slope RMSE vs GFN2-xTB (kcal/mol/Å)": f"{errors['slope_rmse']:.2f}",
                "force vs own dE/dd (kcal/mol/Å)": f"{errors['self_consistency']:.2f}",
            }
        )
    title = (
        f"{bond_label} scan of {display(args.structure)} frame {args.frame}, {args.range[0]}-{args.range[1]} Å, "
        f"start {start:.3f} Å"
    )
    return write_table(rows, args.out / "bond_scan_errors", title)


def _stacked(prediction: tuple[np.ndarray, list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    energies, forces = prediction
    return energies, np.stack(forces)


def main(argv: list[str] | None = None) -> int:
    return diagnostic_main(get_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
