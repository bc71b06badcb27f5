"""Hyper-parameter search over (C_PITC, C_PISC, δr_max) with Optuna (App. B).

Each trial is a run of the grid (the one named, a run of method ``piwsl``, with the trial's
values as ``piwsl`` overrides and the tag ``hpo<k>``) trained and evaluated by the experiment
runner on the **validation** split; the test split is never seen. One objective is minimized
with TPE; two or more (e.g. energy and force RMSE) with Optuna's multi-objective TPE, whose
Pareto front is the set of "several best hyper-parameters" the paper reports finding. Trials are
stored in an SQLite file with the names of their objectives, so a rerun with the same objectives
adds trials to the search; a trial interrupted mid-training is not resumed (the next trial has
another number, values and run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from piwsl.config import PIWSLConfig
from piwsl.experiments.grid import RunSpec, merge
from piwsl.experiments.runner import Options, Paths, RunFailed, execute_run, render_config, resolved_config

if TYPE_CHECKING:
    import optuna

#: Objectives a trial can be scored by: errors on the validation split.
OBJECTIVES = ("energy_rmse", "energy_mae", "forces_rmse", "forces_mae")
#: The study's user attribute holding the names of its objectives, in order.
OBJECTIVES_ATTRIBUTE = "objectives"


class HPOError(ValueError):
    """A search that cannot run as asked (run, objectives); the message says what to change."""


@dataclass(frozen=True)
class SearchSpace:
    """Log-uniform ranges of the loss weights, uniform range of δr_max (Å)."""

    c_pitc: tuple[float, float] = (0.01, 10.0)
    c_pisc: tuple[float, float] = (1e-4, 1.0)
    max_displacement: tuple[float, float] = (0.01, 0.1)


def check_tunable(run: RunSpec, paths: Paths) -> None:
    """Raise ``HPOError`` unless ``run`` trains method ``piwsl`` (whose weights and δr_max are tuned)."""
    section = resolved_config(render_config(run, paths)).get("piwsl")
    method = PIWSLConfig.from_dict(section).method
    if method != "piwsl":
        raise HPOError(
            f"run {run.name} trains method {method!r}; the search tunes C_PITC, C_PISC and δr_max of method "
            "'piwsl': name a run of a piwsl method"
        )


def trial_run(run: RunSpec, number: int, values: dict[str, float]) -> RunSpec:
    """The grid run with the trial's piwsl values and its own name."""
    tag = f"hpo{number}"
    return dataclasses.replace(
        run, name=f"{run.name}-{tag}", tag=tag, overrides=merge(run.overrides, {"piwsl": values})
    )


def check_objectives(study: optuna.Study, objectives: list[str], storage: str) -> None:
    """Record ``objectives`` in a new study; raise ``HPOError`` if a stored study was run with others."""
    stored = study.user_attrs.get(OBJECTIVES_ATTRIBUTE)
    if stored is None and study.trials:
        raise HPOError(
            f"the study {study.study_name} in {storage} does not record its objectives (an older version wrote it); "
            "delete the file to start a new search"
        )
    if stored is None:
        study.set_user_attr(OBJECTIVES_ATTRIBUTE, list(objectives))
    elif list(stored) != list(objectives):
        raise HPOError(
            f"the study {study.study_name} in {storage} minimizes {', '.join(stored)}, not {', '.join(objectives)}; "
            "rerun with those objectives (in that order) or delete the file to start a new search"
        )


def search(
    run: RunSpec, paths: Paths, options: Options, space: SearchSpace, objectives: list[str], trials: int, seed: int = 0
):
    """Run ``trials`` more trials (resuming the stored study) and return the Optuna study."""
    import optuna

    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise HPOError(f"unknown objective(s) {unknown}; allowed: {', '.join(OBJECTIVES)}")
    check_tunable(run, paths)
    storage = paths.work_dir / "hpo" / f"{run.name}.db"
    storage.parent.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    study = optuna.create_study(
        study_name=run.name,
        storage=f"sqlite:///{storage}",
        load_if_exists=True,
        directions=["minimize"] * len(objectives),
        sampler=sampler,
    )
    check_objectives(study, objectives, str(storage))
    evaluate_options = dataclasses.replace(options, eval_split="val")

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        values = {
            "c_pitc": trial.suggest_float("c_pitc", *space.c_pitc, log=True),
            "c_pisc": trial.suggest_float("c_pisc", *space.c_pisc, log=True),
            "max_displacement": trial.suggest_float("max_displacement", *space.max_displacement),
        }
        try:
            result = execute_run(trial_run(run, trial.number, values), paths, evaluate_options)
        except RunFailed as failure:
            raise optuna.TrialPruned(str(failure).splitlines()[0]) from failure
        return tuple(float(result["val"][name]) for name in objectives)

    study.optimize(objective, n_trials=trials)
    return study


def trial_rows(study, objectives: list[str]) -> list[dict]:
    """Completed trials, best first (by the first objective), Pareto-optimal ones marked."""
    import optuna

    best = {trial.number for trial in study.best_trials}
    completed = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    rows = []
    for trial in sorted(completed, key=lambda trial: trial.values[0]):  # exact values: ties in print
        row = {"trial": trial.number, "pareto": "yes" if trial.number in best else ""}
        row |= {name: f"{trial.params[name]:.4g}" for name in ("c_pitc", "c_pisc", "max_displacement")}
        row |= {name: f"{value:.4f}" for name, value in zip(objectives, trial.values, strict=True)}
        rows.append(row)
    return rows
