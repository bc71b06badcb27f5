"""Choosing a tuned setting from a sweep study's validation results (``scripts/select_tuned_baseline.py``).

The rule: each method of the study (a setting) is scored by the mean over N_train of its
validation metric (best checkpoint, mean over the seeds run) divided by the lowest value any
method of the study reached at that N_train; the lowest score wins (1.0: best at every N_train),
except that the study's reference method (the paper's setting) is kept unless the best score is
lower than its own by more than ``tolerance`` (relative, default 1 %: one seed's validation noise
is not a reason to change the setting); among the others, ties go to the order of the study.
Only finished runs with the grid's current config hash count (``aggregate.current_results``),
and a setting without a result at some N_train cannot be chosen: the choice waits until the sweep
is complete. Test errors are never looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from piwsl.experiments import aggregate
from piwsl.experiments.grid import load_grid

DEFAULT_METRIC = "energy_force_nmae"
#: Relative score margin by which a setting must beat the reference (the paper's) to be chosen.
DEFAULT_TOLERANCE = 0.01


class SelectionError(ValueError):
    """The sweep cannot be scored yet (missing study, results or metric); the message says what is missing."""


@dataclass(frozen=True)
class Score:
    """One setting: its label, validation metric per N_train (mean over seeds), and its score."""

    method: str
    label: str
    values: dict[int, float]
    score: float


@dataclass(frozen=True)
class Selection:
    """The scores of every setting, best first, and the chosen one."""

    study: str
    metric: str
    scores: list[Score]
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def chosen(self) -> Score:
        return self.scores[0]

    def to_json(self) -> dict:
        return {
            "study": self.study,
            "metric": self.metric,
            "rule": (
                f"lowest mean over N_train of validation {self.metric} / the best value at that N_train; the "
                f"study's reference unless beaten by more than {100 * self.tolerance:g} %"
            ),
            "chosen": self.chosen.method,
            "chosen_label": self.chosen.label,
            "scores": [
                {"method": s.method, "label": s.label, "score": s.score, "validation": s.values} for s in self.scores
            ],
        }


def select(
    results_dir: Path, study_name: str, metric: str = DEFAULT_METRIC, tolerance: float = DEFAULT_TOLERANCE
) -> Selection:
    """Score the settings of ``study_name`` from ``results_dir`` (a runner's results directory), chosen first."""
    grid = aggregate.load_grid_description(results_dir)
    if grid is None:
        raise SelectionError(
            f"{Path(results_dir) / 'grid.json'} not found: run the sweep with scripts/run_experiments.py"
        )
    studies = {study["name"]: study for study in grid["studies"]}
    if study_name not in studies:
        raise SelectionError(f"the grid has no study {study_name!r}; it has {', '.join(studies)}")
    study = studies[study_name]
    current, _ = aggregate.current_results(aggregate.load_results(results_dir), grid)
    results = aggregate.study_results(study, current)
    values: dict[str, dict[int, list[float]]] = {method: {} for method in study["methods"]}
    for result in results:
        value = (result.get("val_metrics") or {}).get(metric)
        if value is None:
            raise SelectionError(f"{result['run']}: its validation metrics have no {metric!r}")
        values[result["method"]].setdefault(result["train_size"], []).append(float(value))
    sizes = study["train_sizes"]
    missing = [f"{m} at N_train {n}" for m in study["methods"] for n in sizes if n not in values[m]]
    if missing:
        raise SelectionError(f"study {study_name} is not complete: no current results for {', '.join(missing)}")
    means = {m: {n: sum(v) / len(v) for n, v in per_size.items()} for m, per_size in values.items()}
    best = {n: min(means[m][n] for m in means) for n in sizes}
    labels = study.get("labels", {}).get("methods", {})
    order = [study["reference"]] if study.get("reference") else []
    order += [m for m in study["methods"] if m not in order]
    scores = [
        Score(m, labels.get(m, m), means[m], sum(means[m][n] / best[n] for n in sizes) / len(sizes)) for m in order
    ]
    scores.sort(key=lambda s: s.score)  # stable: ties keep the order of the study
    reference = next((s for s in scores if s.method == study.get("reference")), None)
    if reference is not None and reference.score <= scores[0].score * (1 + tolerance):
        scores.remove(reference)
        scores.insert(0, reference)
    return Selection(study=study_name, metric=metric, scores=scores, tolerance=tolerance)


def format_selection(selection: Selection) -> str:
    """A plain-text table of the scores, best first, and the choice."""
    sizes = sorted(selection.chosen.values)
    header = f"{'method':16s} {'label':40s} " + " ".join(f"{'N=' + str(n):>10s}" for n in sizes) + f" {'score':>8s}"
    lines = [f"validation {selection.metric} (best checkpoint, mean over seeds) of study {selection.study}:", header]
    for s in selection.scores:
        cells = " ".join(f"{s.values[n]:10.4f}" for n in sizes)
        lines.append(f"{s.method:16s} {s.label[:40]:40s} {cells} {s.score:8.4f}")
    lines.append(f"chosen: {selection.chosen.method} ({selection.chosen.label})")
    return "\n".join(lines)


def grid_uses_choice(grid_file: Path, method: str, chosen: str) -> bool:
    """Whether ``method`` of the grid file trains with the same settings as the ``chosen`` method.

    Settings are the run config, its directory, force labels and overrides; labels do not count.
    """
    grid = load_grid(grid_file)
    specs = {run.method.name: run.method for run in grid.runs}
    if method not in specs or chosen not in specs:
        missing = method if method not in specs else chosen
        raise SelectionError(f"{grid_file}: no study runs method {missing!r}")

    def settings(name: str) -> tuple:
        spec = specs[name]
        return spec.config, spec.configs, spec.energy_only, spec.overrides

    return settings(method) == settings(chosen)
