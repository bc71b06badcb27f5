#!/usr/bin/env python
"""Overview table, energy-vs-force fronts and learning curves of a study's runs (results/consistency_form).

Complements scripts/aggregate.py (the paper-layout tables) with what the consistency-form study
asks for. From RESULTS/runs/*.json (only runs of the grid's current config, RESULTS/grid.json):

- RESULTS/tables/overview.md|csv: per data set, backbone, method and N_train, mean ± std over
  seeds of the test energy RMSE (kcal/mol), energy R² (1 − MSE / variance of the test energies),
  force RMSE (kcal/mol/Å), training wall time (s) and steps;
- RESULTS/figures/front__<dataset>-n<N>.png: test energy RMSE against force RMSE per method (mean
  and std over seeds), methods that differ only in the supervised energy coefficient joined by a line;
- RESULTS/learning_curves.csv and RESULTS/figures/curves__<dataset>-n<N>.png: validation energy and
  force MAE against the step, per method (seed 0), read from the runs' tensorboard logs.

The test-energy variances (RESULTS/test_energy_variance.json) and learning curves are read from the
prepared splits and logs when present and kept in RESULTS, so the report can be rebuilt from the
committed files alone.

Example: python scripts/consistency_form_report.py --results results/consistency_form
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from piwsl.experiments.aggregate import current_results, load_grid_description, load_results, mean_std

ROOT = Path(__file__).resolve().parents[1]
VALIDATION_METRICS = ("energy_mae", "forces_mae")
#: A method name ending in _e10 / _e100 is its stem with that supervised energy coefficient.
MAIN_BACKBONE = "painn"  # the grid's small PaiNN with direct forces; other backbones are labelled in figures
ENERGY_COEFFICIENT = re.compile(r"^(?P<stem>.+?)(?:_e(?P<coefficient>\d+))?$")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "results/consistency_form", help="the grid's results")
    parser.add_argument(
        "--runs", type=Path, default=None, help="the grid's run directory (default runs/experiments/<grid name>)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "datasets/experiments", help="where the runner prepared the splits"
    )
    return parser


def test_energy_variances(results: list[dict], data_dir: Path, cache: Path) -> dict[str, float]:
    """Population variance of each split's test energies (kcal/mol)², from the LMDBs or the cache file."""
    variances = json.loads(cache.read_text()) if cache.is_file() else {}
    for result in results:
        name = Path(result["data"]).name
        test = data_dir / name / "test"
        if name in variances or not test.is_dir():
            continue
        from fairchem.core.datasets import LmdbDataset

        dataset = LmdbDataset({"src": str(test)})
        energies = np.array([float(dataset[i].energy) for i in range(len(dataset))], dtype=np.float64)
        variances[name] = float(energies.var())
    cache.write_text(json.dumps(dict(sorted(variances.items())), indent=1))
    return variances


def backbone_suffix(backbone: str, backbone_label: str) -> str:
    """What a figure label adds for a run of another backbone than the study's direct-force PaiNN."""
    return "" if backbone == MAIN_BACKBONE else f", {backbone_label}"


def marker(backbone: str, backbone_label: str) -> str:
    """Circles for the study's PaiNN, stars for −dE/dr models, squares for other direct-force models."""
    if backbone == MAIN_BACKBONE:
        return "o"
    return "*" if "−dE/dr" in backbone_label else "s"


def method_label(result: dict) -> str:
    """The method's label; energy-only runs say so, runs of a tagged study (other step budget) say their
    number of steps."""
    label = result["method_label"] + (" (energy-only)" if result.get("energy_only") else "")
    return label + (f", {result['max_steps']:,} steps" if result.get("tag") else "")


def overview_rows(results: list[dict], variances: dict[str, float]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for result in results:
        key = (result["dataset"], result["backbone"], result["method"], result["train_size"], result.get("tag") or "")
        groups[key].append(result)
    rows = []
    for (dataset, _backbone, method, size, tag), runs in sorted(groups.items()):
        r2 = [
            1 - run["test"]["energy_rmse"] ** 2 / variances[Path(run["data"]).name]
            for run in runs
            if Path(run["data"]).name in variances
        ]
        forces = [run["test"]["forces_rmse"] for run in runs if run["test"].get("forces_rmse") is not None]
        rows.append(
            {
                "dataset": dataset,
                "backbone": runs[0]["backbone_label"],
                "backbone_key": runs[0]["backbone"],
                "method": method_label(runs[0]),
                "method_key": method,
                "energy_only": bool(runs[0].get("energy_only")),
                "tag": tag,
                "N_train": size,
                "seeds": len(runs),
                "energy_rmse": mean_std([run["test"]["energy_rmse"] for run in runs]),
                "energy_r2": mean_std(r2) if r2 else None,
                "forces_rmse": mean_std(forces) if forces else None,
                "train_wall_s": mean_std([run["train_wall_s"] for run in runs]),
                "steps": int(np.mean([run["steps"] for run in runs])),
            }
        )
    return rows


def _cell(stat, digits: int) -> str:
    return "—" if stat is None else stat.format(digits)


def write_overview(rows: list[dict], out: Path) -> str:
    header = [
        "data set", "model", "method", "N_train", "seeds", "E RMSE (kcal/mol)", "E R²",
        "F RMSE (kcal/mol/Å)", "train time (s)", "steps",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with (out.with_suffix(".csv")).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["dataset", "backbone", "method", "tag", "N_train", "seeds", "energy_rmse_mean", "energy_rmse_std",
             "energy_r2_mean", "energy_r2_std", "forces_rmse_mean", "forces_rmse_std", "train_wall_s_mean", "steps"]
        )  # fmt: skip
        for row in rows:
            cells = [
                row["dataset"], row["backbone"], row["method"], str(row["N_train"]), str(row["seeds"]),
                _cell(row["energy_rmse"], 2), _cell(row["energy_r2"], 3), _cell(row["forces_rmse"], 2),
                _cell(row["train_wall_s"], 0), str(row["steps"]),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
            stats = [row["energy_rmse"], row["energy_r2"], row["forces_rmse"]]
            values = [value for stat in stats for value in ((stat.mean, stat.std) if stat else ("", ""))]
            writer.writerow(
                [row["dataset"], row["backbone"], row["method_key"], row["tag"], row["N_train"], row["seeds"], *values,
                 row["train_wall_s"].mean, row["steps"]]
            )  # fmt: skip
    note = "Mean ± sample std over seeds; R² = 1 − MSE / variance of the split's test energies."
    text = "\n".join(lines) + f"\n\n{note}\n"
    out.with_suffix(".md").write_text(text)
    return text


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fronts(rows: list[dict], figures: Path) -> list[Path]:
    """Energy vs force RMSE per method; a line joins a method's supervised energy coefficients 1, 10, 100."""
    plt = pyplot()
    written = []
    panels: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        # tagged studies train longer, energy-only runs have no force labels: neither is on the front
        if row["forces_rmse"] is not None and not row["tag"] and not row["energy_only"]:
            panels[(row["dataset"], row["N_train"])].append(row)
    for (dataset, size), panel in sorted(panels.items()):
        figure, axis = plt.subplots(figsize=(6.4, 4.6))
        lines: dict[tuple, list[tuple[int, dict]]] = defaultdict(list)
        for row in panel:
            match = ENERGY_COEFFICIENT.match(row["method_key"])
            lines[(row["backbone_key"], row["backbone"], match["stem"])].append((int(match["coefficient"] or 1), row))
        for (backbone, backbone_label, _stem), members in sorted(lines.items()):
            members.sort(key=lambda item: item[0])
            x = [m["forces_rmse"].mean for _, m in members]
            y = [m["energy_rmse"].mean for _, m in members]
            label = members[0][1]["method"] + ("" if len(members) == 1 else " (E coef " + "/".join(
                str(c) for c, _ in members) + ")")  # fmt: skip
            label += backbone_suffix(backbone, backbone_label)
            handle = axis.errorbar(
                x, y, xerr=[m["forces_rmse"].std for _, m in members], yerr=[m["energy_rmse"].std for _, m in members],
                marker=marker(backbone, backbone_label), capsize=3, label=label,
                linestyle="-" if len(members) > 1 else "none",
            )  # fmt: skip
            for coefficient, member in members[1:]:
                axis.annotate(
                    f"{coefficient}", (member["forces_rmse"].mean, member["energy_rmse"].mean), fontsize=7,
                    color=handle[0].get_color(), xytext=(3, 3), textcoords="offset points",
                )  # fmt: skip
        axis.set_xlabel("test force RMSE (kcal/mol/Å)")
        axis.set_ylabel("test energy RMSE (kcal/mol)")
        axis.set_title(f"{dataset}, N_train {size}: lower left is better", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = figures / f"front__{dataset}-n{size}.png"
        figure.savefig(path, dpi=130)
        plt.close(figure)
        written.append(path)
    return written


def read_learning_curves(results: list[dict], runs_dir: Path, cache: Path) -> list[dict]:
    """Validation metrics per step from each run's tensorboard log, merged with the cached curves."""
    rows = {}
    if cache.is_file():
        with cache.open() as handle:
            rows = {(r["run"], int(r["step"]), r["metric"]): r for r in csv.DictReader(handle)}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for result in results:
        log = runs_dir / "logs/tensorboard" / result["run_id"]
        if not log.is_dir():
            continue
        events = EventAccumulator(str(log))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        for metric in VALIDATION_METRICS:
            if f"val/{metric}" not in tags:
                continue
            for event in events.Scalars(f"val/{metric}"):
                rows[(result["run"], event.step, metric)] = {
                    "run": result["run"], "step": event.step, "metric": metric, "value": event.value,
                }  # fmt: skip
    ordered = [rows[key] for key in sorted(rows)]
    with cache.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["run", "step", "metric", "value"])
        writer.writeheader()
        writer.writerows(ordered)
    return ordered


def plot_curves(curves: list[dict], results: list[dict], figures: Path) -> list[Path]:
    """Validation energy and force MAE against the step, one line per method, seed 0 runs."""
    plt = pyplot()
    by_run = {result["run"]: result for result in results if result["seed"] == 0}
    panels: dict[tuple, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in curves:
        result = by_run.get(row["run"])
        if result is None:
            continue
        label = method_label(result) + backbone_suffix(result["backbone"], result["backbone_label"])
        panels[(result["dataset"], result["train_size"])][label][row["metric"]].append(
            (int(row["step"]), float(row["value"]))
        )
    written = []
    for (dataset, size), methods in sorted(panels.items()):
        figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for label, metrics in sorted(methods.items()):
            for axis, metric in zip(axes, VALIDATION_METRICS, strict=True):
                points = sorted(metrics.get(metric, []))
                if points:
                    axis.plot(*zip(*points, strict=True), marker=".", label=label)
        for axis, metric in zip(axes, ("validation energy MAE (kcal/mol)", "validation force MAE (kcal/mol/Å)"),
                                strict=True):  # fmt: skip
            axis.set_xlabel("step")
            axis.set_ylabel(metric)
            axis.set_yscale("log")
            axis.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=7)
        figure.suptitle(f"{dataset}, N_train {size}, seed 0 (EMA weights)", fontsize=10)
        figure.tight_layout()
        path = figures / f"curves__{dataset}-n{size}.png"
        figure.savefig(path, dpi=130)
        plt.close(figure)
        written.append(path)
    return written


def run(args: argparse.Namespace) -> str:
    results_dir = args.results
    grid = load_grid_description(results_dir)
    results = load_results(results_dir)
    if grid is not None:
        results, stale = current_results(results, grid)
        if stale:
            print(f"skipped {len(stale)} result(s) of another config: {', '.join(stale)}")
    if not results:
        raise SystemExit(f"no results under {results_dir}/runs")
    runs_dir = args.runs or ROOT / "runs/experiments" / (grid or {}).get("name", results_dir.name)
    (results_dir / "tables").mkdir(exist_ok=True)
    figures = results_dir / "figures"
    figures.mkdir(exist_ok=True)
    variances = test_energy_variances(results, args.data_dir, results_dir / "test_energy_variance.json")
    text = write_overview(overview_rows(results, variances), results_dir / "tables/overview")
    plot_fronts(overview_rows(results, variances), figures)
    curves = read_learning_curves(results, runs_dir, results_dir / "learning_curves.csv")
    plot_curves(curves, results, figures)
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    run(get_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
