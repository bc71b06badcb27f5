"""Training to convergence: early stopping on a validation metric, a wall-clock budget, why a run ended.

Config (``optim`` section)::

    optim:
      early_stopping:
        patience: 10       # validations without improvement before training stops (>= 1)
        min_delta: 0.01    # relative: a validation improves when metric < best * (1 - min_delta); default 0
      max_wall_seconds: 3600  # training time (s, validation included), summed over resumed attempts

Early stopping watches the metric the best checkpoint is selected on (``evaluation_metrics.primary_metric``;
lower is better when its name contains ``mae``, as fairchem decides): after ``patience``
validations in a row that did not improve on the best by the relative ``min_delta``, training
ends at that step with the usual ``best_checkpoint.pt`` (fairchem keeps every strictly lower value
as best, so the best checkpoint may come from a validation that did not count as an improvement
here). The wall-clock budget ends training at the first step boundary after that much training
time; the time between a killed attempt's last checkpoint and the kill is not counted.

``ENERGY_FORCE_METRIC`` is a validation metric of its own, for selecting on energy and forces
together: ``energy_mae / std(E_val) + forces_mae / rms(F_val)`` (dimensionless; a model that
predicts the mean energy and zero forces scores about 1.6), with the spread of the validation
labels, the same for every run on the same split whatever its backbone.

``ConvergenceState`` (best value and step, validations since the last improvement, training
time, why and when training stopped) is stored in every checkpoint under ``CONVERGENCE_KEY`` of
its config and restored on resume, so a killed run continues with the same patience count and
time used. ``ConvergenceTraining`` is the trainer mixin; the rest works without a trainer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from fairchem.core.common import distutils

from piwsl.checkpointing import read_checkpoint
from piwsl.config import PIWSLConfigError

#: Checkpoint config key holding ``ConvergenceState.to_dict()``.
CONVERGENCE_KEY = "piwsl_convergence"
EARLY_STOPPING_KEY = "early_stopping"
WALL_SECONDS_KEY = "max_wall_seconds"
#: Name of the normalized energy + force validation metric (contains ``mae``: lower is better for fairchem).
ENERGY_FORCE_METRIC = "energy_force_nmae"
#: Reasons a run stopped, as recorded in ``ConvergenceState.stopped_by``.
STOP_REASONS = ("early_stopping", "wall_clock", "max_steps")


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after ``patience`` validations without a relative improvement of ``min_delta`` over the best."""

    patience: int
    min_delta: float = 0.0

    @classmethod
    def from_dict(cls, value: Any, where: str = f"optim.{EARLY_STOPPING_KEY}") -> EarlyStopping:
        if not isinstance(value, dict):
            raise PIWSLConfigError(f"{where} = {value!r}; allowed: a mapping {{patience: N, min_delta: x}}")
        unknown = sorted(set(value) - {"patience", "min_delta"})
        if unknown:
            raise PIWSLConfigError(f"unknown key '{where}.{unknown[0]}'; allowed: patience, min_delta")
        patience = value.get("patience")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise PIWSLConfigError(f"{where}.patience = {patience!r}; allowed: an integer >= 1 (validations)")
        min_delta = value.get("min_delta", 0.0)
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0 <= min_delta < 1:
            raise PIWSLConfigError(
                f"{where}.min_delta = {min_delta!r}; allowed: a relative improvement in [0, 1), e.g. 0.01"
            )
        return cls(patience=patience, min_delta=float(min_delta))


@dataclass(frozen=True)
class StoppingRules:
    """The ``optim`` settings that end training before ``max_steps``; both optional."""

    early_stopping: EarlyStopping | None = None
    max_wall_seconds: float | None = None

    @classmethod
    def from_optim(cls, optim: dict[str, Any]) -> StoppingRules:
        early = optim.get(EARLY_STOPPING_KEY)
        seconds = optim.get(WALL_SECONDS_KEY)
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0
        ):
            raise PIWSLConfigError(f"optim.{WALL_SECONDS_KEY} = {seconds!r}; allowed: a positive number of seconds")
        return cls(
            early_stopping=None if early is None else EarlyStopping.from_dict(early),
            max_wall_seconds=None if seconds is None else float(seconds),
        )


@dataclass
class ConvergenceState:
    """What a run has seen so far; JSON-serializable through ``to_dict``.

    ``best``/``best_step``: the best value early stopping counted (an improvement beyond its
    ``min_delta``); ``best_checkpoint_step``: the step of the validation that wrote
    ``best_checkpoint.pt`` (any improvement, fairchem's rule), the model a run is tested with.
    ``training_s`` is training time in s (validation included) of the attempts before the current
    one; ``stopped_by`` one of ``STOP_REASONS`` once training has ended, with ``stopped_at_step``.
    """

    evaluations: int = 0
    best: float | None = None
    best_step: int | None = None
    best_checkpoint_step: int | None = None
    since_improvement: int = 0
    training_s: float = 0.0
    stopped_by: str | None = None
    stopped_at_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> ConvergenceState:
        return cls() if value is None else cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})


class ConvergenceMonitor:
    """Applies ``StoppingRules`` to validations and elapsed time; ``clock`` returns seconds."""

    def __init__(
        self,
        rules: StoppingRules,
        state: ConvergenceState | None = None,
        lower_is_better: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = rules
        self.state = state or ConvergenceState()
        self.lower_is_better = lower_is_better
        self._clock = clock
        self._started: float | None = None

    def start(self) -> None:
        """Begin timing this attempt (training time adds to the state's ``training_s``)."""
        self._started = self._clock()

    def elapsed(self) -> float:
        """Training time (s) of all attempts, the current one up to now."""
        running = 0.0 if self._started is None else self._clock() - self._started
        return self.state.training_s + running

    def _improves(self, value: float) -> bool:
        best = self.state.best
        if best is None:
            return math.isfinite(value)
        delta = 0.0 if self.rules.early_stopping is None else self.rules.early_stopping.min_delta
        if self.lower_is_better:
            return value < best - delta * abs(best)
        return value > best + delta * abs(best)

    def observe(self, step: int, value: float) -> None:
        """Record one validation of the watched metric at ``step``; decide whether early stopping ends training."""
        state = self.state
        state.evaluations += 1
        if self._improves(float(value)):
            state.best, state.best_step, state.since_improvement = float(value), step, 0
        else:
            state.since_improvement += 1
        rule = self.rules.early_stopping
        if rule is not None and state.stopped_by is None and state.since_improvement >= rule.patience:
            self.stop("early_stopping", step)
            logging.info(
                f"early stopping at step {step}: {rule.patience} validations without improvement; "
                f"best {state.best:.6g} at step {state.best_step}"
            )

    def stop(self, reason: str, step: int) -> None:
        """Record that training ends at ``step`` because of ``reason`` (the first reason recorded stays)."""
        if reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {reason!r}; allowed: {', '.join(STOP_REASONS)}")
        if self.state.stopped_by is None:
            self.state.stopped_by, self.state.stopped_at_step = reason, int(step)

    def stop_at_boundary(self, completed: int) -> bool:
        """Whether training ends now, ``completed`` steps done: stopped already, or the time budget is used.

        The budget ends training only after at least one step (every run ends with a validated model).
        """
        budget = self.rules.max_wall_seconds
        if self.state.stopped_by is None and budget is not None and completed > 0 and self.elapsed() >= budget:
            self.stop("wall_clock", completed)
            logging.info(f"wall-clock budget of {budget:.0f} s used after step {completed}: training stops")
        return self.state.stopped_by is not None

    def snapshot(self) -> dict[str, Any]:
        """The state to store in a checkpoint, training time up to now included."""
        return self.state.to_dict() | {"training_s": self.elapsed()}

    def restore(self, value: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's ``snapshot`` (timing restarts at the next ``start``)."""
        self.state = ConvergenceState.from_dict(value)
        self._started = None


def label_spread(records: Iterable[Any]) -> tuple[float, float]:
    """Standard deviation of the records' energies and RMS of their force components (physical units)."""
    count = 0
    mean = m2 = 0.0
    square_sum = 0.0
    components = 0
    for record in records:
        energy = float(record.energy)
        count += 1
        delta = energy - mean
        mean += delta / count
        m2 += delta * (energy - mean)
        forces = getattr(record, "forces", None)
        if forces is not None:
            square_sum += float((forces.double() ** 2).sum())
            components += forces.numel()
    energy_std = math.sqrt(m2 / count) if count else 0.0
    force_rms = math.sqrt(square_sum / components) if components else 0.0
    return energy_std, force_rms


def add_energy_force_metric(metrics: dict[str, dict], energy_std: float, force_rms: float) -> bool:
    """Add ``ENERGY_FORCE_METRIC`` to fairchem validation ``metrics`` when they have both MAEs; say whether."""
    if "energy_mae" not in metrics or "forces_mae" not in metrics or energy_std <= 0 or force_rms <= 0:
        return False
    value = float(metrics["energy_mae"]["metric"]) / energy_std + float(metrics["forces_mae"]["metric"]) / force_rms
    metrics[ENERGY_FORCE_METRIC] = {"total": value, "numel": 1, "metric": value}
    return True


def cosine_schedule_defaults(optim: dict[str, Any]) -> None:
    """``scheduler: CosineAnnealingLR`` without ``T_max`` anneals over the whole run (``T_max = max_steps``)."""
    if optim.get("scheduler") == "CosineAnnealingLR" and "T_max" not in optim and optim.get("max_steps"):
        optim["T_max"] = int(optim["max_steps"])


class ConvergenceTraining:
    """Trainer mixin placed before ``ResumableTraining``: early stopping, wall-clock budget, their record.

    Call ``_setup_convergence()`` in ``__init__`` once ``self.config`` exists. Hooks: ``update_best``
    (every validation), ``validate`` (adds ``ENERGY_FORCE_METRIC``), ``_convergence_stop`` (called
    by ``ResumableTraining`` at every step boundary), ``save`` and ``load_checkpoint``.
    """

    def _setup_convergence(self) -> None:
        primary = self.evaluation_metrics.get("primary_metric", self.evaluator.task_primary_metric[self.name])
        self._convergence = ConvergenceMonitor(
            StoppingRules.from_optim(self.config["optim"]), lower_is_better="mae" in primary
        )
        self._label_spread: tuple[float, float] | None = None

    def train(self, disable_eval_tqdm: bool = False) -> None:
        self._convergence.start()
        super().train(disable_eval_tqdm)

    def validate(self, split: str = "val", disable_tqdm: bool = False) -> dict:
        metrics = super().validate(split=split, disable_tqdm=disable_tqdm)
        dataset = getattr(self, "val_dataset", None) if split == "val" else None
        if dataset is None:
            return metrics
        if self._label_spread is None:
            self._label_spread = label_spread(dataset[i] for i in range(len(dataset)))
        if add_energy_force_metric(metrics, *self._label_spread) and self.logger is not None:
            value = metrics[ENERGY_FORCE_METRIC]["metric"]
            self.logger.log({ENERGY_FORCE_METRIC: value}, step=self.step, split=split)
        return metrics

    def update_best(self, primary_metric: str, val_metrics: dict, disable_eval_tqdm: bool = True) -> None:
        if primary_metric not in val_metrics:
            raise PIWSLConfigError(
                f"evaluation_metrics.primary_metric = {primary_metric!r} is not a validation metric; "
                f"available: {', '.join(sorted(val_metrics))}"
            )
        # Observed first, so that a best checkpoint written now records this validation too.
        self._convergence.observe(self.step, float(val_metrics[primary_metric]["metric"]))
        super().update_best(primary_metric, val_metrics, disable_eval_tqdm=disable_eval_tqdm)

    def _convergence_stop(self, completed: int) -> bool:
        """Whether training ends at this boundary; under DDP every rank stops when one rank's clock says so."""
        stop = self._convergence.stop_at_boundary(completed)
        if self._convergence.rules.max_wall_seconds is None or distutils.get_world_size() == 1:
            return stop  # early stopping decides on metrics that are the same on every rank
        anyone = distutils.all_reduce(torch.tensor(float(stop)), device=self.device)
        if float(anyone) > 0 and not stop:
            self._convergence.stop("wall_clock", completed)
        return float(anyone) > 0

    def save(self, metrics: dict | None = None, checkpoint_file: str = "checkpoint.pt", training_state: bool = True):
        max_steps = self.config["optim"].get("max_steps")
        if training_state and max_steps is not None and self.step >= int(max_steps):
            self._convergence.stop("max_steps", self.step)
        if checkpoint_file == "best_checkpoint.pt":  # fairchem's update_best: a new best validation
            self._convergence.state.best_checkpoint_step = int(self.step)
        self.config[CONVERGENCE_KEY] = self._convergence.snapshot()
        return super().save(metrics, checkpoint_file, training_state)

    def load_checkpoint(self, checkpoint_path: str, checkpoint: dict | None = None, inference_only: bool = False):
        if checkpoint is None:
            checkpoint = read_checkpoint(checkpoint_path)
        super().load_checkpoint(checkpoint_path, checkpoint, inference_only)
        if not inference_only:
            self._convergence.restore(checkpoint.get("config", {}).get(CONVERGENCE_KEY))
