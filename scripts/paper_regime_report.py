#!/usr/bin/env python
"""Summary of the paper-regime study (results/paper_regime) in the three views it is read by.

Complements scripts/aggregate.py (a table per study and test split) with tables that put the two
test sets and the two reference baselines side by side. From RESULTS/runs/*.json, only runs of the
grid's current configs (RESULTS/grid.json):

- RESULTS/tables/paper_regime_errors.md|csv: per backbone, method and N_train, test RMSE on unseen
  molecules and on unseen conformations of training molecules, energy (kcal/mol) and force
  (kcal/mol/Å), mean ± sample std over seeds;
- RESULTS/tables/paper_regime_gains.md|csv: paired gains per seed, ``100 * (1 - RMSE / RMSE_ref)``
  (positive: better), of every method over the paper's baseline and over the tuned baseline
  (--reference, --tuned-reference), on both test sets, with the number of seeds each reference pairs
  (energy-only runs are left out: aggregate.py compares them with the energy-only baseline);
- RESULTS/tables/paper_regime_convergence.md|csv: training time (``convergence.training_s``:
  training and validation, without start-up or the steps an interrupted attempt redid; the
  budget the equal-wall-clock baseline gets) and per step, steps, the best checkpoint's step (the tested model)
  and how each seed's training ended (e: early stopping, c: step cap, w: wall-clock budget), and
  the whole grid's training time (runs copied from a run of the same config not counted).

Example: python scripts/paper_regime_report.py --results results/paper_regime
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from piwsl.experiments.aggregate import (
    Table,
    current_results,
    display_names,
    load_grid_description,
    load_results,
    mean_std,
    relative_gains,
    steps_cell,
    training_seconds,
)

ROOT = Path(__file__).resolve().parents[1]
#: The test splits of the study, with their column labels.
SPLITS = {"test": "unseen molecules", "test_conformations": "unseen conformations"}
QUANTITIES = {"energy": "energy_rmse", "force": "forces_rmse"}
MISSING = "—"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "results/paper_regime", help="the grid's results")
    parser.add_argument(
        "--reference", default="baseline", help="method key of the paper's baseline (default: baseline)"
    )
    parser.add_argument(
        "--tuned-reference",
        default="baseline_tuned",
        help="method key of the tuned baseline (default: baseline_tuned); gains over it are a second column",
    )
    return parser


def method_order(grid: dict, results: list[dict]) -> list[str]:
    """Methods in the order the grid's studies list them, then any others by name."""
    order: list[str] = []
    for study in grid.get("studies", []):
        order += [m for m in study["methods"] if m not in order]
    return order + sorted({r["method"] for r in results} - set(order))


def with_grid_labels(results: list[dict], grid: dict) -> list[dict]:
    """The results with the display names of the grid's studies (``grid.json``, rewritten by every
    runner call), which win over the names a run's JSON recorded when it ran (``aggregate.display_names``)."""
    merged: dict[str, dict[str, str]] = {"backbones": {}, "methods": {}, "groups": {}}
    for study in grid.get("studies", []):
        for kind, names in merged.items():
            names |= study.get("labels", {}).get(kind, {})
    backbone, method, group, _ = display_names({"labels": merged}, results)
    return [
        result
        | {
            "backbone_label": backbone[result["backbone"]],
            "method_label": method[result["method"]],
            "method_group": group[result["method"]],
        }
        for result in results
    ]


def groups(results: list[dict], order: list[str]) -> dict[tuple, list[dict]]:
    """(backbone, method, N_train) -> its results (one per seed), backbones and methods in display order."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for result in results:
        grouped[(result["backbone"], result["method"], result["train_size"])].append(result)
    rank = {method: k for k, method in enumerate(order)}
    return dict(sorted(grouped.items(), key=lambda item: (item[0][0], rank.get(item[0][1], len(rank)), item[0][2])))


def _labels(runs: list[dict]) -> list[str]:
    """Model and method names; a method's group (e.g. ``energy-only``) leads its name."""
    method, group = runs[0].get("method_label", runs[0]["method"]), runs[0].get("method_group")
    return [runs[0].get("backbone_label", runs[0]["backbone"]), f"{group}: {method}" if group else method]


def _stat_cell(values: list[float], digits: int) -> str:
    """Mean ± sample std of ``values``; the value alone when there is one."""
    if not values:
        return MISSING
    return mean_std(values).text(f".{digits}f")


def error_table(grouped: dict[tuple, list[dict]]) -> Table:
    header = ["Model", "Method", "N_train", "seeds"]
    header += [f"{quantity} RMSE, {label}" for label in SPLITS.values() for quantity in QUANTITIES]
    table = Table(title="Test RMSE (energy kcal/mol, force kcal/mol/Å)", header=header, rows=[])
    for (_, _, size), runs in grouped.items():
        row = [*_labels(runs), str(size), str(len(runs))]
        for split in SPLITS:
            for metric in QUANTITIES.values():
                row.append(_stat_cell([r[split][metric] for r in runs if r.get(split, {}).get(metric) is not None], 2))
        table.rows.append(row)
    table.notes.append("Mean ± sample std over seeds; one value: one seed.")
    return table


def gain_table(results: list[dict], grouped: dict[tuple, list[dict]], references: dict[str, str]) -> Table:
    """Paired gains over each reference (``aggregate.relative_gains``) on each test split."""
    everything = {"runs": [r["run"] for r in results]}
    gains = {(split, label): relative_gains(everything | {"reference": method}, results, split)
             for split in SPLITS for label, method in references.items()}  # fmt: skip
    first_split = next(iter(SPLITS))  # the seeds paired on it are counted
    header = ["Model", "Method", "N_train", f"seeds paired ({' / '.join(references)})"]
    header += [f"Δ{q[0].upper()} vs {label}, {name} (%)" for split, name in SPLITS.items() for label in references
               for q in QUANTITIES]  # fmt: skip
    table = Table(title="Paired gain over the reference baselines (%, positive: lower RMSE)", header=header, rows=[])
    for (backbone, method, size), runs in grouped.items():
        if method in references.values() or runs[0].get("energy_only"):
            continue
        key = (runs[0]["dataset"], backbone, method, size, runs[0].get("tag"))
        paired = [gains[(first_split, label)].get(key, {}).get("energy") for label in references]
        row = [*_labels(runs), str(size), " / ".join(str(stat.count) if stat else "0" for stat in paired)]
        for split in SPLITS:
            for label in references:
                stats = gains[(split, label)].get(key, {})
                for quantity in QUANTITIES:
                    stat = stats.get(quantity)
                    row.append(MISSING if stat is None else stat.text("+.1f"))
        table.rows.append(row)
    table.notes.append(
        "Per seed 100·(1 − RMSE / RMSE of the reference of the same seed and N_train), mean ± sample std over "
        "the seeds both have (counted under 'seeds paired', per reference, on unseen molecules); one value: "
        "one seed. Energy-only runs have no row: their gains over the energy-only baseline are in the "
        "energy_only*__gains tables of aggregate.py."
    )
    return table


def reference_methods(grid: dict) -> dict[str, str]:
    """Each method's reference: that of the first study of the grid that lists the method and has one."""
    references: dict[str, str] = {}
    for study in grid.get("studies", []):
        if study.get("reference"):
            for method in study["methods"]:
                references.setdefault(method, study["reference"])
    return references


def time_ratios(runs: list[dict], grouped: dict[tuple, list[dict]], reference: str | None) -> list[float]:
    """Each run's training time over that of the reference run of the same backbone, N_train and seed,
    where both ran on the same CPU (``cpu``, which results written before 2026-12-04 lack: those pair
    with each other)."""
    if reference is None:
        return []
    backbone, size = runs[0]["backbone"], runs[0]["train_size"]
    by_seed = {r["seed"]: r for r in grouped.get((backbone, reference, size), [])}
    return [
        training_seconds(r) / training_seconds(by_seed[r["seed"]])
        for r in runs
        if r["seed"] in by_seed and by_seed[r["seed"]].get("cpu") == r.get("cpu")
    ]


def convergence_table(grouped: dict[tuple, list[dict]], references: dict[str, str]) -> Table:
    """Training time, its ratio to the reference's (``references``: method -> reference method), steps."""
    header = [
        "Model",
        "Method",
        "N_train",
        "training time (min)",
        "time / reference's (same seed)",
        "s per step",
        "steps (how each seed ended)",
        "best checkpoint step",
    ]
    table = Table(title="Training time and convergence", header=header, rows=[])
    for (_, method, size), runs in grouped.items():
        best = [(r.get("convergence") or {}).get("best_checkpoint_step") for r in sorted(runs, key=lambda r: r["seed"])]
        row = [*_labels(runs), str(size), _stat_cell([training_seconds(r) / 60.0 for r in runs], 1)]
        reference = references.get(method)
        ratios = time_ratios(runs, grouped, reference)
        paired = f", {len(ratios)} of {len(runs)} seeds" if len(ratios) < len(runs) else ""
        ratio = f"{_stat_cell(ratios, 2)} ({reference}{paired})" if ratios else MISSING
        row.append("reference" if reference == method else ratio)
        row.append(_stat_cell([training_seconds(r) / r["steps"] for r in runs if r["steps"]], 3))
        row += [steps_cell(runs), ", ".join(MISSING if step is None else str(step) for step in best)]
        table.rows.append(row)
    table.notes.append(
        "Training time: convergence.training_s (training and validation; start-up and the steps an interrupted "
        "attempt redid excluded), mean ± std over seeds (one value: one seed); per step: that time over the "
        "steps (a run on a slower or busier machine shows here, which matters for the equal-wall-clock "
        "baseline). Time / reference's: per seed, the run's training time over that of the reference method "
        "(named; the first study of the grid listing the method names it) of the same N_train and seed, "
        "mean ± std over the seeds both have on the same CPU (the results' `cpu`, recorded since 2026-12-04; "
        "runs without it pair with each other). e: early stopping, c: step cap, w: wall-clock budget."
    )
    every_run = [run for group in grouped.values() for run in group]
    trained = [run for run in every_run if "reused_from" not in run]
    table.notes.append(
        f"The whole grid: {len(trained)} runs trained, {sum(map(training_seconds, trained)) / 3600.0:.2f} hours of "
        f"training time in all (one CPU thread each); {len(every_run) - len(trained)} more results copied from a run "
        "of the same config (reused_from) and not counted."
    )
    return table


def write(table: Table, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = table.to_markdown()
    path.with_suffix(".md").write_text(text)
    table.write_csv(path.with_suffix(".csv"))
    return text


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    grid = load_grid_description(args.results)
    if grid is None:
        print(f"error: {args.results / 'grid.json'} not found (run scripts/run_experiments.py first)", file=sys.stderr)
        return 2
    results, skipped = current_results(load_results(args.results), grid)
    if skipped:
        print(f"warning: skipped {len(skipped)} result(s) not of the grid's current configs", file=sys.stderr)
    if not results:
        print(f"error: no current results in {args.results / 'runs'}", file=sys.stderr)
        return 2
    results = with_grid_labels(results, grid)
    grouped = groups(results, method_order(grid, results))
    references = {"paper's baseline": args.reference, "tuned baseline": args.tuned_reference}
    tables = args.results / "tables"
    for table, name in (
        (error_table(grouped), "paper_regime_errors"),
        (gain_table(results, grouped, references), "paper_regime_gains"),
        (convergence_table(grouped, reference_methods(grid)), "paper_regime_convergence"),
    ):
        print(write(table, tables / name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
