"""Rotation (curl) of predicted forces, App. L / Table 17: how far a model's forces are from -dE/dr.

For each structure the force Jacobian J = dF/dr (3N x 3N) is computed by central finite
differences of the model's forces; conservative forces have a symmetric J. Reported per model
(mean ± std over the checkpoints a label matches, e.g. seeds; each checkpoint's value is its mean
over the structures): the total rotation sum_i |curl_i F_i| (kcal/mol/Å², the paper's Table 17
quantity), the mean per-atom curl, and the asymmetry ||J - J^T||_F / (2 ||J||_F) (0: conservative,
1: purely rotational). Definitions: piwsl/experiments/rotation.py. Gradient-force models (SchNet,
PaiNN with -dE/dr) give ~0 and serve as a check.

Writes OUT/force_rotation.md|.csv and OUT/force_rotation.png (per-structure asymmetry per model).

Example:
  python scripts/diagnostics/force_rotation.py --data datasets/experiments/aspirin-n100-s0/test \\
      --model 'Baseline=results/cpu_study/runs/aspirin-painn-baseline-n100-s*.json' \\
      --model 'PIWSL=results/cpu_study/runs/aspirin-painn-piwsl-n100-s*.json' --out results/cpu_study/diagnostics
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from piwsl.experiments.aggregate import mean_std
from piwsl.experiments.diagnostics import (
    diagnostic_main,
    diagnostic_parser,
    load_calculator,
    load_structures,
    parse_models,
    pyplot,
    write_table,
)
from piwsl.experiments.rotation import Rotation, force_jacobian, rotation


def get_parser() -> argparse.ArgumentParser:
    parser = diagnostic_parser(__doc__, start_structure=False, several_checkpoints=True)
    parser.add_argument(
        "--data", type=Path, required=True, help="structures: a prepared LMDB split directory, an .npz or an ASE file"
    )
    parser.add_argument("--num-structures", type=int, default=10, help="first N structures of --data (default 10)")
    parser.add_argument("--step", type=float, default=1e-3, help="finite-difference step in Å (default 1e-3)")
    return parser


def structure_rotation(calculator, atoms, step: float) -> Rotation:
    """Rotation measures of one structure's predicted forces."""
    return rotation(
        force_jacobian(lambda positions: calculator.predict_positions(atoms, positions), atoms.positions, step)
    )


def run(args: argparse.Namespace) -> str:
    models = parse_models(args.model)
    structures = load_structures(args.data, list(range(args.num_structures)))
    rows, asymmetries = [], {}
    for label, checkpoints in models.items():
        per_model = {"total_rotation": [], "mean_curl": [], "asymmetry": []}
        asymmetries[label] = []
        for checkpoint in tqdm(checkpoints, desc=label):
            calculator = load_calculator(checkpoint, args.energy_unit)
            measures = [structure_rotation(calculator, atoms, args.step) for atoms in structures]
            for key in per_model:
                per_model[key].append(float(np.mean([getattr(m, key) for m in measures])))
            asymmetries[label] += [m.asymmetry for m in measures]
        stats = {key: mean_std(values) for key, values in per_model.items()}
        rows.append(
            {
                "model": label,
                "checkpoints": len(checkpoints),
                "total rotation (kcal/mol/Å²)": stats["total_rotation"].format(2),
                "mean curl per atom (kcal/mol/Å²)": stats["mean_curl"].format(3),
                "asymmetry ‖A‖/‖J‖": stats["asymmetry"].format(4),
            }
        )
    title = f"Force rotation on {args.num_structures} structures of {args.data} (finite differences, h = {args.step} Å)"
    markdown = write_table(rows, args.out / "force_rotation", title, "Mean ± std over the checkpoints of each label.")
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.boxplot(list(asymmetries.values()), tick_labels=list(asymmetries))
    axis.set_ylabel("asymmetry ‖J − Jᵀ‖ / (2‖J‖)")
    axis.set_title("Rotation of predicted forces (0 = conservative)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out / "force_rotation.png", dpi=130)
    plt.close(figure)
    return markdown


def main(argv: list[str] | None = None) -> int:
    return diagnostic_main(get_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
