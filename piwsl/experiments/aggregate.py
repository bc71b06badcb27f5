"""Tables (the layout of the paper's Tables 1-3) and relative-gain plots (Fig. 2a/b) from run results.

Input: ``RESULTS/runs/<run>.json`` written by the runner, and ``RESULTS/grid.json`` naming the
studies, their runs and each run's current config hash (without it, each data set and tag is one
study of everything found). Only results of the grid's runs whose config hash is the grid's
count: results of another config (stale after a change of the grid) are skipped and listed.
Results are grouped by data set, backbone, method, N_train and study tag. Every cell is the mean ±
sample standard deviation (ddof = 1) over the seeds found; a cell with fewer seeds than the study
asks for says ``(n=k)``, a combination without results shows ``—``.

Tables: one per study and data set; rows are backbone x {energy, force} (test RMSE, kcal/mol and
kcal/mol/Å), columns are N_train x method (x the method's group, e.g. FB/GB for Table 3), the
lowest mean of each group of columns in bold. Relative gain of a method over the study's
reference method, per seed (same seed = same split): ``100 * (1 - RMSE_method / RMSE_reference)``
(positive: the method is better), then mean ± std over seeds.

Runs tested on more than one test split (``test_splits`` of a results file, e.g. ``test`` of
unseen molecules and ``test_conformations`` of unseen conformations of training molecules,
``prepare_data.py --split-by molecule --test-conformations``) get one table and one gain table
per split: ``tables/<study>__<dataset>.md`` for ``test``, ``tables/<study>__<dataset>__<split>.md``
for the others.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

#: Row quantity -> key of the test errors in a results file.
QUANTITIES = {"energy": "energy_rmse", "force": "forces_rmse"}
MISSING = "—"
#: Entries of a split's errors that are counts or labels, not errors (``piwsl.evaluate.Errors``).
NOT_AVERAGED = ("num_structures", "energy_unit", "in_training_set")
#: How tables name each test split (``test`` depends on the split mode: see ``split_label``).
SPLIT_LABELS = {"test_conformations": "unseen conformations of training molecules"}


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1; 0 for one value) of ``count`` values."""

    mean: float
    std: float
    count: int

    def text(self, spec: str) -> str:
        """``mean ± std`` in the format ``spec`` (e.g. ``".2f"``); the mean alone for one value, whose
        std of 0 would read as a measured spread."""
        mean = format(self.mean, spec)
        return mean if self.count == 1 else f"{mean} ± {format(self.std, spec.lstrip('+'))}"

    def format(self, digits: int = 2, expected: int | None = None) -> str:
        """``text`` with ``digits`` decimals, marked as in ``marked``."""
        return self.marked(self.text(f".{digits}f"), expected)

    def marked(self, cell: str, expected: int | None) -> str:
        """``cell`` followed by ``(n=k)`` where this holds fewer than ``expected`` values."""
        return cell if expected is None or self.count >= expected else f"{cell} (n={self.count})"


def mean_std(values: list[float]) -> Stat:
    """Mean ± sample standard deviation of finite ``values``; non-finite values make the mean NaN."""
    count = len(values)
    if count == 0:
        raise ValueError("no values")
    mean = sum(values) / count
    variance = sum((v - mean) ** 2 for v in values) / (count - 1) if count > 1 else 0.0
    return Stat(mean=mean, std=math.sqrt(variance), count=count)


@dataclass
class Table:
    """A table as text cells; ``bold`` holds (row, column) indices of cells to emphasize in markdown."""

    title: str
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join("---" if k < 2 else ":---:" for k in range(len(self.header))) + "|")
        for r, row in enumerate(self.rows):
            cells = [f"**{cell}**" if (r, c) in self.bold else cell for c, cell in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"{note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(self.header)
            writer.writerows(self.rows)


def training_seconds(result: dict) -> float:
    """A finished run's training time (s): the trainer's own count (validation included, start-up and test not).

    Results written before the trainer counted it give the training subprocess's wall time instead.
    """
    convergence = result.get("convergence") or {}
    return float(convergence.get("training_s") or result["train_wall_s"])


def load_results(results_dir: Path) -> list[dict]:
    """Every finished run's test results (``runs/*.json``; not ``*.failed.json`` nor validation-only runs)."""
    results = []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        if path.name.endswith(".failed.json"):
            continue
        result = json.loads(path.read_text())
        if "test" in result:
            results.append(result)
    return results


def load_failures(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(results_dir) / "runs").glob("*.failed.json"))]


def load_grid_description(results_dir: Path) -> dict | None:
    """``RESULTS/grid.json`` as the runner wrote it, or None."""
    grid_file = Path(results_dir) / "grid.json"
    return json.loads(grid_file.read_text()) if grid_file.is_file() else None


def current_results(results: list[dict], grid: dict) -> tuple[list[dict], list[str]]:
    """The results of the grid's runs with the grid's config hash and, where both record it, its data
    split (``split_requests``), and descriptions of the ones skipped.

    Results of runs the grid does not have are left out silently. A ``grid.json`` without
    ``config_hashes`` (written by an older runner) cannot tell stale results apart: then every
    result of the grid's runs counts.
    """
    runs = {run for study in grid["studies"] for run in study["runs"]}
    hashes = grid.get("config_hashes")
    requests = grid.get("split_requests", {})
    current, skipped = [], []
    for result in results:
        if result["run"] not in runs:
            continue
        expected = None if hashes is None else hashes.get(result["run"])
        split = requests.get(result["run"])
        if hashes is not None and result.get("config_hash") != expected:
            skipped.append(f"{result['run']} (config hash {result.get('config_hash')}, the grid's {expected})")
        elif split is not None and result.get("split_request", split) != split:
            skipped.append(f"{result['run']} (its data split differs from the grid's: {result['split_request']})")
        else:
            current.append(result)
    return current, skipped


def load_studies(results_dir: Path, results: list[dict]) -> list[dict]:
    """The studies of ``grid.json``, or one study per data set and tag holding every result found."""
    grid = load_grid_description(results_dir)
    if grid is not None:
        return grid["studies"]
    studies = []
    for dataset, tag in sorted({(r["dataset"], r.get("tag") or "") for r in results}):
        mine = [r for r in results if r["dataset"] == dataset and (r.get("tag") or "") == tag]
        methods = sorted({r["method"] for r in mine}, key=lambda m: (m != "baseline", m))
        name = f"{dataset}-{tag}" if tag else dataset
        studies.append(
            {
                "name": name,
                "title": f"{name}: test RMSE, energy kcal/mol, force kcal/mol/Å",
                "datasets": [dataset],
                "backbones": sorted({r["backbone"] for r in mine}),
                "methods": methods,
                "train_sizes": sorted({r["train_size"] for r in mine}),
                "seeds": sorted({r["seed"] for r in mine}),
                "reference": "baseline" if "baseline" in methods else None,
                "tag": tag or None,
                "runs": [r["run"] for r in mine],
            }
        )
    return studies


def _key(result: dict) -> tuple:
    """What results are pooled by (over seeds): data set, backbone, method, N_train and study tag."""
    return result["dataset"], result["backbone"], result["method"], result["train_size"], result.get("tag")


def study_results(study: dict, results: list[dict]) -> list[dict]:
    runs = set(study["runs"])
    return [r for r in results if r["run"] in runs]


def test_splits(results: list[dict]) -> list[str]:
    """The test splits the results were evaluated on: ``test`` first, then the others in order of appearance."""
    names = ["test"]
    for result in results:
        names += [name for name in result.get("test_splits", ["test"]) if name not in names]
    return names


def split_label(split: str, results: list[dict]) -> str:
    """How a table names ``split``: ``test`` of a split by molecule holds unseen molecules."""
    if split == "test":
        by_molecule = results and all(r.get("split_by") == "molecule" for r in results)
        return "test (unseen molecules)" if by_molecule else "test"
    return f"{split} ({SPLIT_LABELS[split]})" if split in SPLIT_LABELS else split


def summarize(results: list[dict], split: str = "test") -> dict[tuple, dict[str, Stat]]:
    """(dataset, backbone, method, N_train, tag) -> metric -> Stat over seeds (errors of ``split``, wall time)."""
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        if split not in result:
            continue
        for metric, value in result[split].items():
            if metric not in NOT_AVERAGED and isinstance(value, (int, float)):
                values[_key(result)][metric].append(float(value))
        values[_key(result)]["train_wall_s"].append(float(result["train_wall_s"]))
    return {key: {metric: mean_std(v) for metric, v in metrics.items()} for key, metrics in values.items()}


def display_names(study: dict, results: list[dict]) -> tuple[dict, dict, dict, dict]:
    """Display names of backbones, methods, method groups and data sets: the study's, else the results'."""
    backbone = {r["backbone"]: r.get("backbone_label", r["backbone"]) for r in results}
    method = {r["method"]: r.get("method_label", r["method"]) for r in results}
    group = {r["method"]: r.get("method_group") for r in results}
    dataset = {r["dataset"]: r.get("dataset_label", r["dataset"]) for r in results}
    labels = study.get("labels", {})
    backbone |= labels.get("backbones", {})
    method |= labels.get("methods", {})
    group |= labels.get("groups", {})
    dataset |= labels.get("datasets", {})
    return backbone, method, group, dataset


def benchmark_table(study: dict, dataset: str, results: list[dict], digits: int = 2, split: str = "test") -> Table:
    """Table 1/2/3 layout for one data set of a study, errors on ``split``."""
    mine = [r for r in study_results(study, results) if r["dataset"] == dataset]
    summary = summarize(mine, split)
    backbone_label, method_label, method_group, dataset_label = display_names(study, mine)
    sizes, methods = study["train_sizes"], study["methods"]
    columns = [(n, m) for n in sizes for m in methods]
    header = ["Model", ""]
    for n, m in columns:
        parts = ([f"N={n}"] if len(sizes) > 1 else []) + ([method_group[m]] if method_group.get(m) else [])
        header.append((", ".join(parts) + ": " if parts else "") + method_label.get(m, m))
    title = f"{study['title']} — {dataset_label.get(dataset, dataset)}"
    if split != "test" or len(test_splits(mine)) > 1:
        title += f" — {split_label(split, mine)}"
    table = Table(title=title, header=header, rows=[])
    expected, tag = len(study["seeds"]), study.get("tag")
    for backbone in study["backbones"]:
        for k, (quantity, metric) in enumerate(QUANTITIES.items()):
            row = [backbone_label.get(backbone, backbone) if k == 0 else "", quantity]
            means = {}
            for c, (n, m) in enumerate(columns, start=2):
                stat = summary.get((dataset, backbone, m, n, tag), {}).get(metric)
                row.append(MISSING if stat is None else stat.format(digits, expected))
                if stat is not None and math.isfinite(stat.mean):
                    means[c] = (n, method_group.get(m), stat.mean)
            table.rows.append(row)
            for c, (n, group, mean) in means.items():
                rivals = [v for d, v in means.items() if d != c and v[:2] == (n, group)]
                if rivals and mean < min(v[2] for v in rivals):
                    table.bold.add((len(table.rows) - 1, c))
    table.notes.append(
        f"Mean ± sample std over {expected} seed(s) (fewer where marked n=k); {split} RMSE on "
        f"{_test_sizes(mine, split)} structures; energy kcal/mol, force kcal/mol/Å; lowest mean per group in bold."
    )
    return table


def _test_sizes(results: list[dict], split: str = "test") -> str:
    sizes = sorted({r[split]["num_structures"] for r in results if split in r})
    return "/".join(str(s) for s in sizes) or "0"


def relative_gains(study: dict, results: list[dict], split: str = "test") -> dict[tuple, dict[str, Stat]]:
    """(dataset, backbone, method, N_train, tag) -> quantity -> Stat of the per-seed gain (%) over the reference."""
    reference = study.get("reference")
    if reference is None:
        return {}
    mine = study_results(study, results)
    by_seed = {(*_key(r), r["seed"]): r for r in mine}
    gains: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (dataset, backbone, method, size, tag, seed), result in by_seed.items():
        base = by_seed.get((dataset, backbone, reference, size, tag, seed))
        if method == reference or base is None or split not in result or split not in base:
            continue
        for quantity, metric in QUANTITIES.items():
            ours, theirs = result[split][metric], base[split][metric]
            if ours is not None and theirs:
                gains[(dataset, backbone, method, size, tag)][quantity].append(100.0 * (1.0 - ours / theirs))
    return {key: {q: mean_std(v) for q, v in values.items()} for key, values in gains.items()}


def gain_table(study: dict, results: list[dict], digits: int = 1, split: str = "test") -> Table:
    """The relative gains on ``split`` as a table: rows data set x backbone x method, columns N_train x quantity."""
    gains = relative_gains(study, results, split)
    mine = study_results(study, results)
    backbone_label, method_label, _, dataset_label = display_names(study, mine)
    sizes = study["train_sizes"]
    header = ["Data set", "Model", "Method"] + [f"N={n}: {q} gain (%)" for n in sizes for q in QUANTITIES]
    reference = method_label.get(study.get("reference"), study.get("reference"))
    title = f"{study['title']} — relative gain over {reference}"
    if split != "test" or len(test_splits(mine)) > 1:
        title += f" — {split_label(split, mine)}"
    table = Table(title=title, header=header, rows=[])
    expected, tag = len(study["seeds"]), study.get("tag")
    for dataset in study["datasets"]:
        for backbone in study["backbones"]:
            for method in study["methods"]:
                if method == study.get("reference"):
                    continue
                row = [dataset_label.get(dataset, dataset), backbone_label.get(backbone, backbone)]
                row.append(method_label.get(method, method))
                for n in sizes:
                    for quantity in QUANTITIES:
                        stat = gains.get((dataset, backbone, method, n, tag), {}).get(quantity)
                        if stat is None:
                            row.append(MISSING)
                        else:
                            row.append(stat.marked(stat.text(f"+.{digits}f"), expected))
                table.rows.append(row)
    table.notes.append(
        "Gain = 100·(1 − RMSE_method / RMSE_reference) per seed (paired split), mean ± sample std "
        f"over {expected} seed(s) (fewer where marked n=k)."
    )
    return table


#: How training ended (``convergence.stopped_by``), abbreviated in the runtime tables.
STOP_MARKS = {"early_stopping": "e", "max_steps": "c", "wall_clock": "w"}


def steps_cell(runs: list[dict]) -> str:
    """The runs' training steps (a range where seeds differ) and, for runs that record it, how each ended."""
    steps = sorted(r["steps"] for r in runs)
    cell = str(steps[0]) if steps[0] == steps[-1] else f"{steps[0]}–{steps[-1]}"
    marks = [
        STOP_MARKS.get((r.get("convergence") or {}).get("stopped_by"), "")
        for r in sorted(runs, key=lambda r: r["seed"])
    ]
    return f"{cell} ({','.join(marks)})" if any(marks) else cell


def runtime_table(study: dict, results: list[dict]) -> Table:
    """Training wall time per run (s, mean ± std over seeds), steps and how training ended: rows data set x
    backbone x method."""
    mine = study_results(study, results)
    summary = summarize(mine)
    runs_of: dict[tuple, list[dict]] = defaultdict(list)
    for result in mine:
        runs_of[_key(result)].append(result)
    backbone_label, method_label, method_group, dataset_label = display_names(study, mine)
    sizes = study["train_sizes"]
    header = ["Data set", "Model", "Method"] + [f"N={n}: train time (s) / steps" for n in sizes]
    table = Table(title=f"{study['title']} — training wall time", header=header, rows=[])
    expected, tag = len(study["seeds"]), study.get("tag")
    for dataset in study["datasets"]:
        for backbone in study["backbones"]:
            for method in study["methods"]:
                label = method_label.get(method, method)
                group = method_group.get(method)
                row = [dataset_label.get(dataset, dataset), backbone_label.get(backbone, backbone)]
                row.append(f"{group}: {label}" if group else label)
                for n in sizes:
                    key = (dataset, backbone, method, n, tag)
                    stat = summary.get(key, {}).get("train_wall_s")
                    if stat is None:
                        row.append(MISSING)
                    else:
                        cell = f"{stat.text('.0f')} / {steps_cell(runs_of[key])}"
                        row.append(stat.marked(cell, expected))
                table.rows.append(row)
    total = sum(r["train_wall_s"] + r.get("eval_wall_s", 0.0) for r in mine) / 60.0
    table.notes.append(
        f"Mean ± sample std over {expected} seed(s) (fewer where marked n=k) of the wall time of the training "
        "subprocess (start-up and validation included, test excluded), training steps and, per seed, how "
        "training ended (e: early stopping, c: step cap, w: wall-clock budget); "
        f"all {len(mine)} runs of the study took {total:.0f} min of training and testing."
    )
    return table


def plot_gains(study: dict, dataset: str, results: list[dict], path: Path) -> bool:
    """Fig. 2a/b: energy and force gain (%) over the reference vs N_train; False if nothing to plot."""
    from piwsl.experiments.diagnostics import pyplot

    plt = pyplot()
    tag = study.get("tag")
    gains = {k: v for k, v in relative_gains(study, results).items() if k[0] == dataset}
    if not gains:
        return False
    backbone_label, method_label, _, dataset_label = display_names(study, study_results(study, results))
    sizes = study["train_sizes"]
    positions = {n: k for k, n in enumerate(sizes)}
    methods = [m for m in study["methods"] if m != study.get("reference")]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v", "P"]
    several_backbones = len(study["backbones"]) > 1  # then a colour per backbone, else per method
    legend_height = 0.25 * -(-len(methods) * len(study["backbones"]) // 2)  # inches, 2 entries a row
    height = 4.0 + legend_height
    figure, axes = plt.subplots(1, 2, figsize=(11, height))
    for axis, (letter, quantity) in zip(axes, (("a", "energy"), ("b", "force")), strict=True):
        for b, backbone in enumerate(study["backbones"]):
            for k, method in enumerate(methods):
                points = [(n, gains[(dataset, backbone, method, n, tag)][quantity]) for n in sizes
                          if (dataset, backbone, method, n, tag) in gains]  # fmt: skip
                if not points:
                    continue
                shift = (k - (len(methods) - 1) / 2) * 0.06
                label = method_label.get(method, method)  # one backbone: named in the title instead
                if several_backbones:
                    label = f"{backbone_label.get(backbone, backbone)}, {label}"
                axis.errorbar(
                    [positions[n] + shift for n, _ in points],
                    [s.mean for _, s in points],
                    yerr=[s.std for _, s in points],
                    color=colours[(b if several_backbones else k) % len(colours)],
                    marker=markers[k % len(markers)],
                    linestyle="-" if k == 0 else "--",
                    capsize=3,
                    label=label,
                )
        axis.axhline(0.0, color="0.4", linewidth=0.8)
        low = min((s[quantity].mean for s in gains.values() if quantity in s), default=0.0)
        if low < -100.0:  # a method far worse than the reference would flatten the others
            axis.set_yscale("symlog", linthresh=10.0)
        axis.set_xlim(-0.5, len(sizes) - 0.5)
        axis.set_xticks(range(len(sizes)), [str(n) for n in sizes])
        axis.set_xlabel("N_train")
        scale = ", symlog" if axis.get_yscale() == "symlog" else ""
        axis.set_ylabel(f"{quantity} RMSE gain (%{scale})")
        axis.set_title(f"({letter}) {quantity}")
        axis.grid(alpha=0.3)
    handles = {}  # below the axes, where it hides no point; one entry per line
    for axis in axes:
        handles.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    title = dataset_label.get(dataset, dataset)
    if not several_backbones:
        title += f"; {backbone_label.get(study['backbones'][0], study['backbones'][0])}"
    reference = method_label.get(study["reference"], study["reference"])
    figure.suptitle(f"{title}\ntest RMSE gain over {reference} (%, positive: lower error)", fontsize=10)
    figure.tight_layout(rect=(0.0, legend_height / height + 0.02, 1.0, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return True


#: Validation terms drawn by ``plot_validation_curves`` (those a run logged), with their axis labels.
CURVE_TERMS = {
    "energy_force_nmae": "validation E/F NMAE (selection)",
    "energy_mae": "validation energy MAE (kcal/mol)",
    "forces_mae": "validation force MAE (kcal/mol/Å)",
}


def plot_validation_curves(study: dict, dataset: str, backbone: str, results: list[dict], path: Path) -> bool:
    """Validation selection metric, energy and force MAE vs training step of the study's lowest-seed
    runs, one column per N_train, one line per method, the best checkpoint (the tested model)
    marked: has training converged? False if no result of the data set and backbone records a
    ``val_curve``."""
    from piwsl.experiments.diagnostics import pyplot

    tag = study.get("tag")
    mine = [
        r
        for r in study_results(study, results)
        if (r["dataset"], r["backbone"], r.get("tag")) == (dataset, backbone, tag)
    ]
    mine = [r for r in mine if r.get("val_curve")]
    if not mine:
        return False
    seed = min(r["seed"] for r in mine)
    runs = {(r["method"], r["train_size"]): r for r in mine if r["seed"] == seed}
    sizes = [n for n in study["train_sizes"] if any(size == n for _, size in runs)]
    terms = [t for t in CURVE_TERMS if any(t in r["val_curve"] for r in runs.values())]
    if not terms:
        return False
    backbone_label, method_label, _, dataset_label = display_names(study, mine)
    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(
        len(terms), len(sizes), figsize=(max(4.6 * len(sizes), 6.0), 3.3 * len(terms)), squeeze=False, sharex="col"
    )
    for column, size in enumerate(sizes):
        for row, term in enumerate(terms):
            axis = axes[row, column]
            for k, method in enumerate(study["methods"]):
                run = runs.get((method, size))
                curve = None if run is None else run["val_curve"].get(term)
                if curve is None:
                    continue
                colour = colours[k % len(colours)]
                axis.plot(curve["step"], curve["value"], color=colour, label=method_label.get(method, method))
                best = (run.get("convergence") or {}).get("best_checkpoint_step")
                if best in curve["step"]:
                    axis.plot(best, curve["value"][curve["step"].index(best)], "o", color=colour, markersize=5)
            axis.set_yscale("log")
            axis.set(ylabel=CURVE_TERMS[term], title=f"N_train = {size}")
            axis.grid(alpha=0.3, which="both")
        axes[-1, column].set_xlabel("training step")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    figure.suptitle(
        f"{dataset_label.get(dataset, dataset)}\n{backbone_label.get(backbone, backbone)}, seed {seed}: "
        "validation curves (dot: best checkpoint)",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def summary_rows(results: list[dict]) -> list[dict]:
    """Long format: one row per (dataset, backbone, method, N_train, tag, test split) with numeric means and stds."""
    rows = []
    for split in test_splits(results):
        summary = summarize(results, split)
        for (dataset, backbone, method, size, tag), metrics in sorted(summary.items(), key=lambda item: str(item[0])):
            row = {"dataset": dataset, "backbone": backbone, "method": method, "train_size": size, "tag": tag or ""}
            row["seeds"] = max(stat.count for stat in metrics.values())
            for metric in ("energy_rmse", "energy_mae", "forces_rmse", "forces_mae", "train_wall_s"):
                stat = metrics.get(metric)
                row[f"{metric}_mean"] = None if stat is None else stat.mean
                row[f"{metric}_std"] = None if stat is None else stat.std
            rows.append(row | {"split": split})
    return rows


def aggregate(results_dir: Path, out_dir: Path, digits: int = 2) -> str:
    """Write every table (markdown + CSV), gain plot and the long summary; return the markdown.

    Results that ``current_results`` skips are listed on stderr and at the end of ``all.md``.
    """
    results = load_results(results_dir)
    if not results:
        raise FileNotFoundError(f"no results in {Path(results_dir) / 'runs'}")
    grid = load_grid_description(results_dir)
    skipped = []
    if grid is not None:
        results, skipped = current_results(results, grid)
        if "config_hashes" not in grid:
            print(
                f"warning: {Path(results_dir) / 'grid.json'} lists no config hashes (written by an older runner), so "
                "stale results cannot be told apart; rerun scripts/run_experiments.py on the grid to rewrite it",
                file=sys.stderr,
            )
        if skipped:
            print(f"warning: skipped {len(skipped)} result(s): " + "; ".join(skipped), file=sys.stderr)
        if not results:
            raise FileNotFoundError(f"no results of the runs of {Path(results_dir) / 'grid.json'}")
    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for study in load_studies(results_dir, results):
        if not study_results(study, results):
            continue
        splits = test_splits(study_results(study, results))
        for dataset in study["datasets"]:
            stem = f"{study['name']}__{dataset}"
            for split in splits:
                table = benchmark_table(study, dataset, results, digits, split)
                name = stem if split == "test" else f"{stem}__{split}"
                (tables_dir / f"{name}.md").write_text(table.to_markdown())
                table.write_csv(tables_dir / f"{name}.csv")
                sections.append(table.to_markdown())
            if plot_gains(study, dataset, results, figures_dir / f"gain_{stem}.png"):
                sections.append(f"![relative gains]({Path('..') / 'figures' / f'gain_{stem}.png'})\n")
            for backbone in study["backbones"]:
                figure = f"val_curves__{stem}__{backbone}.png"
                if plot_validation_curves(study, dataset, backbone, results, figures_dir / figure):
                    sections.append(f"![validation curves]({Path('..') / 'figures' / figure})\n")
        table = runtime_table(study, results)
        (tables_dir / f"{study['name']}__runtime.md").write_text(table.to_markdown())
        table.write_csv(tables_dir / f"{study['name']}__runtime.csv")
        sections.append(table.to_markdown())
        for split in splits if study.get("reference") else []:
            table = gain_table(study, results, split=split)
            name = f"{study['name']}__gains" + ("" if split == "test" else f"__{split}")
            (tables_dir / f"{name}.md").write_text(table.to_markdown())
            table.write_csv(tables_dir / f"{name}.csv")
            sections.append(table.to_markdown())
    rows = summary_rows(results)
    with open(tables_dir / "summary.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    failures = load_failures(results_dir)
    if failures:
        sections.append("Failed runs: " + ", ".join(f["run"] for f in failures) + "\n")
    if skipped:
        sections.append("Results not used (not of the grid's current configs): " + "; ".join(skipped) + "\n")
    text = "\n".join(sections)
    (tables_dir / "all.md").write_text(text)
    return text
