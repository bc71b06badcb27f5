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

Every checkpoint also stores the run's settings and their hash (``SETTINGS_KEY``); resuming a
run id whose stored settings differ from the current ones is refused, naming the differing keys
(a reused ``--timestamp-id`` would otherwise return the old model without a word).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
from typing import Any

import torch

from piwsl.reproducibility import capture_rng_state, restore_rng_state

RESUME_KEY = "piwsl_resume_state"
#: Checkpoint config key holding ``{"hash": ..., "settings": ...}`` of the run.
SETTINGS_KEY = "piwsl_run_settings"
#: Trainer config sections that decide what a run computes (``cmd.seed`` is added).
SETTINGS_SECTIONS = (
    "task", "model", "outputs", "optim", "loss_functions", "evaluation_metrics", "dataset", "val_dataset",
    "test_dataset",
)  # fmt: skip
#: ``optim`` keys that change how a run executes, not what it computes.
EXECUTION_KEYS = ("num_workers", "checkpoint_every")
#: fairchem's own periodic save is disabled by a period no run reaches.
_NEVER = 2**62


class TrainingStopped(Exception):
    """Raised at a step boundary after a stop signal; the checkpoint of that boundary is saved."""

    def __init__(self, signal_number: int, step: int) -> None:
        super().__init__(f"stopped by signal {signal_number} after step {step}; rerun the same command to resume")
        self.signal_number = signal_number


class _StepLimitReached(Exception):
    """Raised at a step boundary where training ends (``optim.max_steps``, or ``_convergence_stop``)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training ends after step {step}")
        self.step = step


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or does not fit the run."""


class OutputError(RuntimeError):
    """A checkpoint that cannot be written (disk full, read-only); the message names the path."""


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint on the CPU, with a clear error if it is missing, truncated, corrupt or no checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for damaged files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated, corrupt or not a checkpoint: {first_line}); "
            "delete it to start over"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise CheckpointError(f"{path} is not a piwsl/fairchem checkpoint (it has no model weights and config)")
    return checkpoint


#: Checkpoint entries a run started from the checkpoint reads: weights, their average, normalizers,
#: per-element reference energies (``weights_digest``).
WEIGHT_ENTRIES = ("state_dict", "ema", "normalizers", "elementrefs")


def weights_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint's ``WEIGHT_ENTRIES`` (tensor values, dtypes, shapes, names), not of its file.

    A checkpoint file also stores the run's config, paths and timestamps, so two trainings with the
    same settings that end in the same weights write different files; their digests are equal.
    """
    checkpoint = read_checkpoint(str(path))
    digest = hashlib.sha256()
    _feed_digest(digest, {key: checkpoint.get(key) for key in WEIGHT_ENTRIES})
    return digest.hexdigest()


def _feed_digest(digest: Any, value: Any) -> None:
    """Feed ``value`` (nested dicts, lists, tensors, scalars) to ``digest`` in a canonical order."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {tensor.dtype} {tuple(value.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}:".encode())
        for key in sorted(value, key=str):
            digest.update(f"{key!s}=".encode())
            _feed_digest(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"list {len(value)}:".encode())
        for item in value:
            _feed_digest(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a trainer config computes: its sections and seed, as JSON values, without execution-only keys.

    ``optim.max_epochs`` is left out when ``optim.max_steps`` is set: the trainer derives it from the
    steps and the batches per epoch, which depend on the number of DDP ranks.
    """
    settings = {key: copy.deepcopy(config.get(key)) for key in SETTINGS_SECTIONS}
    settings["seed"] = config.get("cmd", {}).get("seed")
    optim = settings.get("optim") or {}
    for key in EXECUTION_KEYS + (("max_epochs",) if optim.get("max_steps") is not None else ()):
        optim.pop(key, None)
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def differing_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two ``run_settings``, as ``key (old -> new)``."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    missing = object()
    return [
        f"{key} ({old_flat.get(key, 'unset')!r} -> {new_flat.get(key, 'unset')!r})"
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key, missing) != new_flat.get(key, missing)
    ]


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
        settings = run_settings(self.config)
        self.config[SETTINGS_KEY] = {"hash": settings_hash(settings), "settings": settings}

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
        except (OSError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "write" not in str(error).lower():
                raise
            raise self._write_error(checkpoint_file, error) from error
        finally:
            self.config.pop(RESUME_KEY, None)
        if path is None:
            return None
        final = path[: -len(".partial")]
        os.replace(path, final)
        return final

    def _write_error(self, checkpoint_file: str, error: Exception) -> OutputError:
        """An ``OutputError`` naming the checkpoint and the free space of its disk; the partial file removed."""
        directory = self.config["cmd"]["checkpoint_dir"]
        partial = os.path.join(directory, f"{checkpoint_file}.partial")
        with contextlib.suppress(OSError):
            os.remove(partial)
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1]
        try:
            free = f"{shutil.disk_usage(directory).free / 2**20:.0f} MiB free on its disk"
        except OSError:
            free = "its directory is not accessible"
        return OutputError(
            f"cannot write checkpoint {os.path.join(directory, checkpoint_file)} ({reason}); {free}: "
            "is the disk full or read-only? The previous checkpoint is kept"
        )

    def load_checkpoint(
        self, checkpoint_path: str, checkpoint: dict | None = None, inference_only: bool = False
    ) -> None:
        if checkpoint is None:
            checkpoint = read_checkpoint(checkpoint_path)
        if not inference_only:
            self._check_resumed_settings(checkpoint_path, checkpoint)
        try:
            super().load_checkpoint(checkpoint_path, checkpoint, inference_only)
        except (RuntimeError, KeyError, ValueError, AssertionError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            model = checkpoint.get("config", {}).get("model", {})
            raise CheckpointError(
                f"checkpoint {checkpoint_path} does not fit this model (it holds a "
                f"{model.get('name', 'model')} with other layers or sizes: {first_line}); "
                "use the config it was trained with"
            ) from error
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

    def _check_resumed_settings(self, checkpoint_path: str, checkpoint: dict) -> None:
        """Refuse to resume this run id from a checkpoint of the same run id trained with other settings."""
        own = os.path.join(self.config["cmd"]["checkpoint_dir"], "checkpoint.pt")
        if not os.path.exists(own) or not os.path.samefile(checkpoint_path, own):
            return  # --checkpoint of another run: fine-tuning from it is allowed
        stored = checkpoint.get("config", {}).get(SETTINGS_KEY)
        current = self.config.get(SETTINGS_KEY)
        if stored is None or current is None or stored["hash"] == current["hash"]:
            return
        differences = differing_settings(stored["settings"], current["settings"])
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise CheckpointError(
            f"run {self.config['cmd']['timestamp_id']} was trained with other settings than now: {shown}. "
            f"Give this run another --timestamp-id, or delete {self.config['cmd']['checkpoint_dir']} to start over"
        )

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
        except _StepLimitReached as end:
            self.step = end.step
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
            raise _StepLimitReached(self._max_steps)
        if self._convergence_stop(completed):
            raise _StepLimitReached(completed)

    def _convergence_stop(self, completed: int) -> bool:
        """Whether training ends at this boundary before ``max_steps`` (``piwsl.convergence`` overrides it)."""
        return False

    def _save_boundary(self, completed: int) -> None:
        current = (self.step, self.epoch)
        self.step = completed
        self.epoch = completed / len(self.train_loader)
        try:
            self.save(checkpoint_file="checkpoint.pt", training_state=True)
        finally:
            self.step, self.epoch = current
        self._saved_step = completed
