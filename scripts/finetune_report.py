#!/usr/bin/env python
"""Learning curves of a fine-tuning study (results/finetune_dft): test RMSE against N_train.

Complements scripts/aggregate.py (the paper-layout tables) with the view the fine-tuning study is
read by. From RESULTS/runs/*.json (only runs of the grid's current config, RESULTS/grid.json) of
the fine-tuning data set, and the cheap level's own error against the expensive one on the same
test frames (RESULTS/gfn2xtb_vs_wb97x.json, written by scripts/compare_levels.py):

- RESULTS/tables/finetune_curves.md|csv: per backbone, method and N_train, mean ± sample std over
  seeds of the test energy RMSE (kcal/mol) and force RMSE (kcal/mol/Å), and the paired change of
  each against the reference method of the same seed (``100 * (1 - RMSE / RMSE_reference)``,
  positive: better than the reference);
- RESULTS/tables/finetune_compact.md: per backbone, methods x N_train with ``E / F`` means in each
  cell (the layout of the README);
- RESULTS/figures/finetune_curves.png: energy (left) and force RMSE (right) against N_train (log
  axis), one row per backbone, one line per method (mean, error bars: std over seeds), the cheap
  level's error as a dashed line (the error of a model that had learnt the pretraining level exactly,
  after removing the constant energy offset between the levels).

Example: python scripts/finetune_report.py --results results/finetune_dft
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

from piwsl.experiments.aggregate import QUANTITIES as GAIN_QUANTITIES
from piwsl.experiments.aggregate import current_results, load_grid_description, load_results, mean_std, relative_gains

ROOT = Path(__file__).resolve().parents[1]
QUANTITIES = {"energy_rmse": "E RMSE (kcal/mol)", "forces_rmse": "F RMSE (kcal/mol/Å)"}
#: The key of each quantity among ``aggregate.relative_gains``' paired gains.
GAIN_NAMES = {metric: name for name, metric in GAIN_QUANTITIES.items()}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "results/finetune_dft", help="the grid's results")
    parser.add_argument(
        "--dataset", default="ethanol_dft", help="the grid's key of the fine-tuning data set (default: ethanol_dft)"
    )
    parser.add_argument(
        "--reference-method",
        default="ft_baseline",
        help="method the paired changes are computed against (default: ft_baseline, the fine-tuned baseline)",
    )
    parser.add_argument(
        "--level-comparison",
        type=Path,
        default=None,
        help="scripts/compare_levels.py output drawn as the cheap level's error (default: "
        "RESULTS/gfn2xtb_vs_wb97x.json when it exists; 'none' draws none)",
    )
    return parser


def curve_rows(results: list[dict], reference_method: str, method_order: list[str] = ()) -> list[dict]:
    """One row per backbone, method and N_train with mean ± std over seeds and paired changes; methods
    in ``method_order`` (the grid's order) first, the others after them by name."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for result in results:
        groups[(result["backbone"], result["method"], result["train_size"])].append(result)
    gains = relative_gains({"runs": [r["run"] for r in results], "reference": reference_method}, results)
    rows = []

    def order(key: tuple) -> tuple:
        backbone, method, size = key
        rank = method_order.index(method) if method in method_order else len(method_order)
        return backbone, rank, method, size

    for (backbone, method, size), runs in sorted(groups.items(), key=lambda item: order(item[0])):
        row = {
            "backbone": backbone,
            "backbone_label": runs[0]["backbone_label"],
            "method": method,
            "method_label": runs[0]["method_label"],
            "N_train": size,
            "seeds": len(runs),
        }
        changes = gains.get((runs[0]["dataset"], backbone, method, size, runs[0].get("tag")), {})
        for quantity in QUANTITIES:
            values = [run["test"][quantity] for run in runs if run["test"].get(quantity) is not None]
            row[quantity] = mean_std(values) if values else None
            row[f"{quantity}_change"] = changes.get(GAIN_NAMES[quantity])
        rows.append(row)
    return rows


def _cell(stat, digits: int) -> str:
    return "—" if stat is None else stat.format(digits)


def write_table(rows: list[dict], reference_label: str, out: Path) -> str:
    header = ["model", "method", "N_train", "seeds", *QUANTITIES.values(), f"ΔE vs {reference_label} (%)",
              f"ΔF vs {reference_label} (%)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = [f"{q}_{s}" for q in QUANTITIES for s in ("mean", "std")]
        columns += [f"{q}_change_pct_{s}" for q in QUANTITIES for s in ("mean", "std")]
        writer.writerow(["backbone", "method", "N_train", "seeds", *columns])
        for row in rows:
            stats = [row[q] for q in QUANTITIES] + [row[f"{q}_change"] for q in QUANTITIES]
            cells = [row["backbone_label"], row["method_label"], str(row["N_train"]), str(row["seeds"])]
            cells += [_cell(stat, 2) for stat in stats[:2]] + [_cell(stat, 1) for stat in stats[2:]]
            lines.append("| " + " | ".join(cells) + " |")
            values = [v for stat in stats for v in ((stat.mean, stat.std) if stat else ("", ""))]
            writer.writerow([row["backbone"], row["method"], row["N_train"], row["seeds"], *values])
    note = (
        "Test RMSE against the expensive level on the held-out frames, mean ± sample std over seeds; "
        f"Δ: paired per seed, 100·(1 − RMSE / RMSE of {reference_label}), positive is better."
    )
    text = "\n".join(lines) + f"\n\n{note}\n"
    out.with_suffix(".md").write_text(text)
    return text


def write_compact_table(rows: list[dict], level: dict | None, out: Path) -> str:
    """Per backbone: methods x N_train, each cell ``E / F`` (means over seeds; seeds counted where fewer)."""
    sizes = sorted({row["N_train"] for row in rows})
    most_seeds = max(row["seeds"] for row in rows)
    lines = []
    for backbone in dict.fromkeys(row["backbone"] for row in rows):
        backbone_rows = [row for row in rows if row["backbone"] == backbone]
        lines += [f"**{backbone_rows[0]['backbone_label']}**: test RMSE E (kcal/mol) / F (kcal/mol/Å)", ""]
        lines += ["| method | " + " | ".join(f"N_train {size}" for size in sizes) + " |"]
        lines += ["|---|" + ":---:|" * len(sizes)]
        for method in dict.fromkeys(row["method"] for row in backbone_rows):
            cells = {row["N_train"]: row for row in backbone_rows if row["method"] == method}
            texts = []
            for size in sizes:
                row = cells.get(size)
                if row is None:
                    texts.append("—")
                    continue
                forces = "—" if row["forces_rmse"] is None else f"{row['forces_rmse'].mean:.2f}"
                count = "" if row["seeds"] == most_seeds else f" (n={row['seeds']})"
                texts.append(f"{row['energy_rmse'].mean:.2f} / {forces}{count}")
            label = next(iter(cells.values()))["method_label"]
            lines.append(f"| {label} | " + " | ".join(texts) + " |")
        lines.append("")
    if level is not None:
        lines.append(
            f"The cheap level itself on the same test frames: {level['energy_rmse_kcal_mol']:.2f} / "
            f"{level['forces_rmse_kcal_mol_A']:.2f} (energy after removing the constant offset)."
        )
    text = "\n".join(lines).rstrip() + "\n"
    out.write_text(text)
    return text


def plot_curves(rows: list[dict], level: dict | None, path: Path) -> Path:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(row["backbone"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))  # one colour per method in every panel
    colours = {method: f"C{index % 10}" for index, method in enumerate(methods)}
    sizes = sorted({row["N_train"] for row in rows})
    figure, axes = plt.subplots(len(backbones), 2, figsize=(10, 3.6 * len(backbones)), squeeze=False)
    level_values = {}
    if level is not None:
        level_values = {"energy_rmse": level["energy_rmse_kcal_mol"], "forces_rmse": level["forces_rmse_kcal_mol_A"]}
    for axes_row, backbone in zip(axes, backbones, strict=True):
        backbone_rows = [row for row in rows if row["backbone"] == backbone]
        for axis, (quantity, label) in zip(axes_row, QUANTITIES.items(), strict=True):
            for method in methods:
                points = [row for row in backbone_rows if row["method"] == method and row[quantity] is not None]
                if points:
                    axis.errorbar(
                        [p["N_train"] for p in points], [p[quantity].mean for p in points],
                        yerr=[p[quantity].std for p in points], marker="o", capsize=3, label=points[0]["method_label"],
                        color=colours[method],
                    )  # fmt: skip
            if quantity in level_values:
                axis.axhline(
                    level_values[quantity], color="k", linestyle="--", linewidth=1,
                    label="cheap level itself (constant offset removed)",
                )  # fmt: skip
            axis.set_xscale("log")
            axis.set_xticks(sizes, [str(size) for size in sizes])
            axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            axis.set_ylim(bottom=0)
            axis.set_xlabel("N_train (expensive energies)")
            axis.set_ylabel(label)
            axis.set_title(backbone_rows[0]["backbone_label"], fontsize=9)
            axis.grid(True, which="both", alpha=0.3)
        axes_row[0].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    results = load_results(args.results)
    grid = load_grid_description(args.results)
    if grid is not None:
        results, stale = current_results(results, grid)
        for description in stale:
            print(f"warning: skipped the stale result {description}", file=sys.stderr)
    results = [r for r in results if r["dataset"] == args.dataset]
    if not results:
        print(f"error: no results of data set {args.dataset!r} in {args.results / 'runs'}", file=sys.stderr)
        return 1
    level_file = args.level_comparison or args.results / "gfn2xtb_vs_wb97x.json"
    level = json.loads(level_file.read_text()) if str(level_file) != "none" and level_file.is_file() else None
    method_order = [] if grid is None else [m for study in grid["studies"] for m in study.get("methods", [])]
    rows = curve_rows(results, args.reference_method, list(dict.fromkeys(method_order)))
    labels = [r["method_label"] for r in results if r["method"] == args.reference_method]
    text = write_table(rows, labels[0] if labels else args.reference_method, args.results / "tables/finetune_curves")
    compact = write_compact_table(rows, level, args.results / "tables/finetune_compact.md")
    figure = plot_curves(rows, level, args.results / "figures/finetune_curves.png")
    print(text)
    print(compact)
    tables = args.results / "tables"
    print(f"wrote {tables / 'finetune_curves.md'} (and .csv), {tables / 'finetune_compact.md'}, {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
