"""Exact resumption for fairchem trainers: atomic checkpoints at step boundaries, clean stops on SIGTERM.

fairchem saves its periodic ``checkpoint.pt`` in the middle of a step (after the optimizer step,
before validation and the scheduler step), does not save random generator states, and writes
files in place, so a kill during a save leaves an unreadable checkpoint. ``ResumableTraining``
instead saves at the start of the first training forward after every ``optim.checkpoint_every``
completed steps (and at the end of training), when step ``k - 1`` is complete in every respect,
together with the torch/NumPy/Python generators and the displacement samplers; files are written
under a temporary name and renamed into place. SIGTERM makes training stop at the next step
boundary after saving such a checkpoint; rerunning the same command resumes from it, and on CPU
the resumed run ends with the same weights and metrics as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import torch

from piwsl.reproducibility import capture_rng_state, restore_rng_state

RESUME_KEY = "piwsl_resume_state"
#: fairchem's own periodic save is disabled by a period no run reaches.
_NEVER = 2**62


class TrainingStopped(Exception):
    """Raised at a step boundary after a stop signal; the checkpoint of that boundary is saved."""

    def __init__(self, signal_number: int, step: int) -> None:
        super().__init__(f"stopped by signal {signal_number} after step {step}; rerun the same command to resume")
        self.signal_number = signal_number


class _StepLimitReached(Exception):
    """Raised at the step boundary after ``optim.max_steps`` completed steps: training ends there."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read."""


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint on the CPU, with a clear error if it is truncated or corrupt."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for damaged files
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt: {error}); delete it to start over"
        ) from error


class ResumableTraining:
    """Mixin placed before ``OCPTrainer``; the trainer provides ``displacement_samplers()``."""

    def _setup_checkpoints(self) -> None:
        optim = self.config["optim"]
        loader = getattr(self, "train_loader", None)
        default_period = optim.get("eval_every", len(loader) if loader is not None else -1)
        self._checkpoint_every = int(optim.get("checkpoint_every", default_period))
        optim["checkpoint_every"] = _NEVER
        max_steps = optim.get("max_steps")
        self._max_steps: int | None = None if max_steps is None else int(max_steps)
        self._saved_step: int | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._stop_signal: int | None = None

    def displacement_samplers(self) -> dict[str, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ save / load
    def save(
        self,
        metrics: dict | None = None,
        checkpoint_file: str = "checkpoint.pt",
        training_state: bool = True,
    ) -> str | None:
        """fairchem's save, written atomically, with generator states when ``training_state``."""
        if training_state:
            self.config[RESUME_KEY] = {
                "rng": capture_rng_state(),
                "samplers": {name: sampler.state_dict() for name, sampler in self.displacement_samplers().items()},
            }
        try:
            path = super().save(metrics, f"{checkpoint_file}.partial", training_state)
        finally:
            self.config.pop(RESUME_KEY, None)
        if path is None:
            return None
        final = path[: -len(".partial")]
        os.replace(path, final)
        return final

    def load_checkpoint(
        self, checkpoint_path: str, checkpoint: dict | None = None, inference_only: bool = False
    ) -> None:
        if checkpoint is None:
            checkpoint = read_checkpoint(checkpoint_path)
        super().load_checkpoint(checkpoint_path, checkpoint, inference_only)
        state = checkpoint.get("config", {}).get(RESUME_KEY)
        if state is None or inference_only:
            return
        samplers = self.displacement_samplers()
        for name, sampler_state in state["samplers"].items():
            if name in samplers:
                samplers[name].load_state_dict(sampler_state)
        # The data loader draws from the global generator when train() creates its iterator;
        # restoring at the first training forward puts every generator where it was at the save.
        self._rng_to_restore = state["rng"]
        self._saved_step = self.step

    # ------------------------------------------------------------------ training
    def train(self, disable_eval_tqdm: bool = False) -> None:
        """fairchem's training loop, ended after exactly ``optim.max_steps`` steps when that is set.

        A run whose last step was not validated (fewer steps than ``eval_every``, or a step count
        that is not a multiple of it) is validated once more at the end, so that every run that
        trained ends with a ``best_checkpoint.pt``.
        """
        handler_installed = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._request_stop) if handler_installed else None
        first_step = self.step
        try:
            super().train(disable_eval_tqdm)
        except _StepLimitReached:
            self.step = self._max_steps
            self.epoch = self.step / len(self.train_loader)
        except TrainingStopped as stop:
            logging.warning(str(stop))
            raise SystemExit(128 + stop.signal_number) from stop
        finally:
            if handler_installed:
                signal.signal(signal.SIGTERM, previous)
        if self.step > first_step:
            self._validate_last_step(disable_eval_tqdm)
        self._save_boundary(self.step)

    def _validate_last_step(self, disable_eval_tqdm: bool) -> None:
        """Validate (and keep as best if it is) the final weights when the loop did not just do so."""
        eval_every = self.config["optim"].get("eval_every", len(self.train_loader))
        if getattr(self, "val_loader", None) is None or self.step % eval_every == 0:
            return
        primary_metric = self.evaluation_metrics.get("primary_metric", self.evaluator.task_primary_metric[self.name])
        metrics = self.validate(split="val", disable_tqdm=disable_eval_tqdm)
        self.update_best(primary_metric, metrics, disable_eval_tqdm=disable_eval_tqdm)

    def _request_stop(self, signal_number: int, _frame: Any) -> None:
        logging.warning(f"signal {signal_number}: stopping at the next step boundary after a checkpoint")
        self._stop_signal = signal_number

    def _at_step_boundary(self) -> None:
        """Called at the start of every training forward, when ``self.step - 1`` steps are complete."""
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        completed = self.step - 1
        periodic = self._checkpoint_every > 0 and completed > 0 and completed % self._checkpoint_every == 0
        if (periodic or self._stop_signal is not None) and completed != self._saved_step:
            self._save_boundary(completed)
        if self._stop_signal is not None:
            raise TrainingStopped(self._stop_signal, completed)
        if self._max_steps is not None and completed >= self._max_steps:
            raise _StepLimitReached()

    def _save_boundary(self, completed: int) -> None:
        current = (self.step, self.epoch)
        self.step = completed
        self.epoch = completed / len(self.train_loader)
        try:
            self.save(checkpoint_file="checkpoint.pt", training_state=True)
        finally:
            self.step, self.epoch = current
        self._saved_step = completed
