"""Non-finite training steps never reach the weights or a checkpoint.

fairchem applies whatever gradient a step produced: one NaN label, or a learning rate that makes
the model overflow, turns every weight into NaN, and the run goes on saving NaN checkpoints.
``FiniteStepGuard`` (a mixin placed before ``OCPTrainer``) instead drops an optimizer step whose
gradients are not all finite (an optimizer pre-step hook clears them, so the optimizer skips
every parameter), counts it, names the training records with non-finite labels when the batch
has any, and stops with ``TrainingDiverged`` after ``limit`` such steps in a row. ``save`` refuses
weights that are not finite. Under DDP the decision is the same on every rank: the gradients it
looks at are already averaged over all ranks.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch

from piwsl.dataset_checks import DatasetError

#: Labels checked for non-finite values when a step is skipped.
LABEL_KEYS = ("energy", "forces")


class TrainingDiverged(FloatingPointError):
    """Too many consecutive training steps with a non-finite loss or gradients; the message names likely causes."""


def nonfinite_records(batch: Batch, keys: tuple[str, ...] = LABEL_KEYS) -> list[int]:
    """Record ids (``sid``, the LMDB key for piwsl datasets) of the batch's structures with non-finite labels."""
    bad = torch.zeros(int(batch.natoms.numel()), dtype=torch.bool, device=batch.natoms.device)
    for key in keys:
        if key not in batch.keys():
            continue
        values = batch[key]
        if values.numel() == bad.numel():  # one value per structure
            bad |= ~torch.isfinite(values.view(bad.numel(), -1)).all(dim=1)
        else:  # one row per atom
            atoms_bad = ~torch.isfinite(values.view(values.shape[0], -1)).all(dim=1)
            bad.index_put_((batch.batch[atoms_bad],), torch.ones_like(atoms_bad[atoms_bad]))
    indices = bad.nonzero().view(-1).tolist()
    if not indices:
        return []
    ids = getattr(batch, "sid", None)
    if isinstance(ids, Tensor):
        return [int(ids.view(-1)[i]) for i in indices]
    if isinstance(ids, list):
        return [int(ids[i]) for i in indices]
    return indices


class FiniteStepGuard:
    """Mixin for fairchem trainers; call ``_setup_step_guard(limit)`` once the optimizer exists."""

    def _setup_step_guard(self, limit: int) -> None:
        self._check_normalizers()
        self._nonfinite_step_limit = limit
        self.skipped_steps = 0
        self._consecutive_skipped_steps = 0
        self._bad_records: set[int] = set()
        self._last_train_batch: Batch | None = None
        self._step_skipped = False
        if getattr(self, "optimizer", None) is not None:  # inference-only trainers have none
            # A weak reference: a bound method in the optimizer's hooks would keep the trainer (and its open
            # LMDBs) alive after the last user reference is gone, until the cyclic garbage collector runs.
            guard = weakref.WeakMethod(self._drop_nonfinite_gradients)
            self.optimizer.register_step_pre_hook(lambda optimizer, *args: _call_if_alive(guard, optimizer, *args))

    def _check_normalizers(self) -> None:
        """Normalizers fitted on a training set with NaN labels would make every step non-finite: refuse them."""
        for target, normalizer in getattr(self, "normalizers", {}).items():
            for name, value in normalizer.state_dict().items():
                if not bool(torch.isfinite(value).all()):
                    raise DatasetError(
                        f"the {target} normalizer's {name} fitted on {self.config.get('dataset', {}).get('src')} is "
                        f"{value.tolist()}: the training set has non-finite labels (main.py's data check names them)"
                    )

    def _compute_loss(self, out: dict[str, Tensor], batch: Batch) -> Tensor:
        if self.model.training and torch.is_grad_enabled():
            self._last_train_batch = batch  # a reference, kept to name bad records if the step is skipped
        return super()._compute_loss(out, batch)

    def _backward(self, loss: Tensor) -> None:
        self._step_skipped = False
        super()._backward(loss)
        if not self._step_skipped:
            self._consecutive_skipped_steps = 0
            return
        if self._consecutive_skipped_steps >= self._nonfinite_step_limit:
            raise TrainingDiverged(self._diverged_message(float(loss.detach())))

    def _drop_nonfinite_gradients(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Optimizer pre-step hook: with any non-finite gradient, clear them all (the step changes nothing)."""
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not parameters or bool(torch.stack([torch.isfinite(p.grad).all() for p in parameters]).all()):
            return
        for parameter in parameters:
            parameter.grad = None
        self._step_skipped = True
        self.skipped_steps += 1
        self._consecutive_skipped_steps += 1
        records = nonfinite_records(self._last_train_batch) if self._last_train_batch is not None else []
        self._bad_records.update(records)
        self.metrics = self.evaluator.update("skipped_steps", float(self.skipped_steps), self.metrics)
        where = f"; non-finite labels in training record(s) {records}" if records else ""
        logging.warning(
            f"step {self.step}: non-finite loss or gradients, step skipped ({self.skipped_steps} so far, "
            f"{self._consecutive_skipped_steps} in a row){where}"
        )

    def _diverged_message(self, loss: float) -> str:
        source = self.config.get("dataset", {}).get("src")
        causes = [f"a learning rate too high (optim.lr_initial = {self.config['optim'].get('lr_initial')})"]
        if self._bad_records:
            causes.insert(0, f"non-finite labels in training record(s) {sorted(self._bad_records)[:10]} of {source}")
        else:
            causes.append(f"non-finite labels in {source}")
        return (
            f"training stopped: the loss or its gradients were non-finite in {self._consecutive_skipped_steps} "
            f"consecutive steps (last loss {loss}; piwsl.max_nonfinite_steps), {self.skipped_steps} skipped in all; "
            f"likely causes: {'; '.join(causes)}. The weights and checkpoints are those of the last finite step"
        )

    def save(self, *args: Any, **kwargs: Any) -> str | None:
        """fairchem's save, refused for weights that are not all finite (they would poison every later use)."""
        state = self._unwrapped_model.state_dict()
        finite = torch.stack([torch.isfinite(tensor).all() for tensor in state.values()]).tolist()
        bad = [name for name, ok in zip(state, finite, strict=True) if not ok]
        if bad:
            raise TrainingDiverged(
                f"refusing to save a checkpoint with non-finite weights ({', '.join(bad[:3])}, ...); "
                "lower optim.lr_initial or check the labels"
            )
        return super().save(*args, **kwargs)


def _call_if_alive(method: weakref.WeakMethod, *args: Any) -> None:
    bound = method()
    if bound is not None:
        bound(*args)
