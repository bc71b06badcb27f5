"""Fine-tuning: start a run from the weights of a checkpoint of the same backbone.

The ``finetune`` config section (``main.py --finetune-from CKPT`` fills ``checkpoint``) loads the
checkpoint's model weights (by default the exponential moving average a training ``checkpoint.pt``
keeps, the weights fairchem evaluates; a ``best_checkpoint.pt`` holds only those) into the
configured model and keeps everything else of the new run fresh: optimizer, learning-rate schedule,
step count, EMA, and the normalizers, fitted on the fine-tuning set as the config says (a change of
level of theory shifts energies; per-element reference energies are refitted when the fine-tuning
set is prepared with ``prepare_data.py --self-energies fit``). A target the new run does not
normalize because its fine-tuning set has no labels of it (the forces of an energy-only set, for a
model with a force head) keeps the checkpoint's normalizer: the pretrained head's output keeps its
meaning; ``normalizers: checkpoint`` takes every normalizer from the checkpoint (``take_normalizers``).
Parameters whose names match a ``freeze`` pattern (``fnmatch``, e.g. ``embedding.*``) are not
trained. A resumed fine-tuning run continues from its own ``checkpoint.pt`` like any run
(fairchem loads it after the trainer is built).

Element references on a fine-tuning set of one composition (e.g. MD frames of one molecule): the
least-squares fit of ``prepare_data.py --self-energies fit`` then determines only the sum of the
references over that composition; the minimum-norm solution it takes (``piwsl.data.references``)
makes that sum the mean training energy, so every split's energies become the total energy minus
the training mean (a shift), and the per-element values mean nothing for other compositions.
metadata.json records the fit's ``rank`` (1 for one composition); ``prepare_data.py`` warns.

Refused with one line naming the mismatch: a checkpoint of another architecture or size, one trained
on data in other units, and a fine-tuning set with elements the pretrained model never saw (unless
``allow_new_elements``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass
from typing import Any

import torch
from ase.data import chemical_symbols

from piwsl.checkpointing import read_checkpoint
from piwsl.config import PIWSLConfigError
from piwsl.training_data import TRAINING_DATA_KEY, TrainingData

#: Where ``main.py`` puts the section for the trainer (fairchem passes ``optim`` keys through).
OPTIM_KEY = "finetune"


class FinetuneError(ValueError):
    """A checkpoint that cannot start this run; the message names the mismatch."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of the ``finetune`` section.

    Attributes:
        checkpoint: path of a piwsl or fairchem checkpoint of the configured backbone.
        freeze: ``fnmatch`` patterns of parameter names that stay as loaded (not trained).
        weights: ``ema`` (the checkpoint's exponential moving average, as evaluated, where it has one) or
            ``raw`` (the optimizer's current weights of a training checkpoint).
        allow_new_elements: accept fine-tuning data with elements absent from the pretraining data.
        normalizers: ``refit`` (fitted on the fine-tuning set as the config says; targets it has no
            labels of keep the checkpoint's) or ``checkpoint`` (every normalizer the checkpoint has: the
            pretrained model's output keeps its scale, e.g. when the fine-tuning set's energy spread,
            one molecule's conformations, is far below the pretraining set's).
        shift_energy: shift the energy normalizer's mean by the mean of label minus pretrained prediction
            over the training set (kcal/mol; ``shift_energy_to_labels``), so that fine-tuning starts
            without a constant offset between the two levels of theory.
    """

    checkpoint: str
    freeze: tuple[str, ...] = ()
    weights: str = "ema"
    allow_new_elements: bool = False
    normalizers: str = "refit"
    shift_energy: bool = False

    @classmethod
    def from_dict(cls, section: Any, where: str = "finetune") -> FinetuneConfig:
        if not isinstance(section, dict):
            raise PIWSLConfigError(f"the '{where}' section must be a mapping (checkpoint:, freeze:, ...)")
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise PIWSLConfigError(f"unknown key(s) in '{where}': {', '.join(unknown)}; allowed: {', '.join(known)}")
        if not isinstance(section.get("checkpoint"), str):
            raise PIWSLConfigError(f"{where}.checkpoint: the path of the checkpoint to start from is required")
        freeze = section.get("freeze", ())
        freeze = [freeze] if isinstance(freeze, str) else freeze
        if not isinstance(freeze, list | tuple) or not all(isinstance(p, str) for p in freeze):
            raise PIWSLConfigError(f"{where}.freeze = {freeze!r}; allowed: a list of parameter-name patterns")
        if section.get("normalizers", "refit") not in ("refit", "checkpoint"):
            raise PIWSLConfigError(f"{where}.normalizers = {section['normalizers']!r}; allowed: refit, checkpoint")
        if section.get("weights", "ema") not in ("ema", "raw"):
            raise PIWSLConfigError(f"{where}.weights = {section['weights']!r}; allowed: ema, raw")
        if not isinstance(section.get("shift_energy", False), bool):
            raise PIWSLConfigError(f"{where}.shift_energy = {section['shift_energy']!r}; allowed: true, false")
        if not isinstance(section.get("allow_new_elements", False), bool):
            raise PIWSLConfigError(
                f"{where}.allow_new_elements = {section['allow_new_elements']!r}; allowed: true, false"
            )
        return cls(**(section | {"freeze": tuple(freeze)}))


def _strip_wrapper(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names without DDP's ``module.`` prefix (fairchem saves the wrapped model)."""
    return {key.removeprefix("module."): value for key, value in state.items()}


def check_fit(
    model: torch.nn.Module, state: dict[str, torch.Tensor], checkpoint: dict, path: str, config: dict
) -> None:
    """Raise ``FinetuneError`` unless ``state`` has exactly the configured model's parameters and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or reshaped):
        return
    theirs, ours = checkpoint.get("config", {}).get("model", {}), config.get("model", {})
    differing = [
        f"model.{key}: {theirs.get(key)!r} in the checkpoint, {ours.get(key)!r} here"
        for key in sorted(set(theirs) | set(ours))
        if theirs.get(key) != ours.get(key) and key not in ("otf_graph", "use_pbc")
    ]
    problems = [f"{len(missing)} missing parameter(s) (e.g. {missing[0]})"] if missing else []
    problems += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
    problems += [f"{len(reshaped)} of other shape (e.g. {reshaped[0]})"] if reshaped else []
    raise FinetuneError(
        f"finetune.checkpoint {path} does not fit the configured model: {'; '.join(problems)}"
        + (f"; {'; '.join(differing[:4])}" if differing else "")
        + ": configure the pretrained model's architecture and size"
    )


def check_data(pretrained: TrainingData | None, current: dict | None, path: str, allow_new_elements: bool) -> None:
    """Refuse pretraining data in other units and, unless allowed, fine-tuning elements the model never saw."""
    if pretrained is None or not current:
        return
    units = current.get("units") or {}
    for quantity in ("energy", "forces"):
        theirs, ours = (pretrained.units or {}).get(quantity), units.get(quantity)
        if theirs and ours and theirs != ours:
            raise FinetuneError(
                f"finetune.checkpoint {path} was trained on {quantity} in {theirs}, the fine-tuning data are in "
                f"{ours}: prepare the fine-tuning data in the pretraining units"
            )
    new = sorted(set(current.get("elements") or ()) - set(pretrained.elements))
    if new and pretrained.elements and not allow_new_elements:
        raise FinetuneError(
            f"the fine-tuning data hold element(s) {', '.join(chemical_symbols[z] for z in new)} that "
            f"finetune.checkpoint {path} never saw (it was trained on "
            f"{', '.join(chemical_symbols[z] for z in pretrained.elements)}); set finetune.allow_new_elements: true "
            "to start them from untrained embeddings"
        )


def start_from_checkpoint(trainer, settings: FinetuneConfig) -> list[str]:
    """Load the checkpoint's weights into ``trainer``'s model, restart its EMA, freeze; return the frozen names."""
    checkpoint = read_checkpoint(settings.checkpoint)
    model = trainer._unwrapped_model
    state = _strip_wrapper(checkpoint["state_dict"])
    check_fit(model, state, checkpoint, settings.checkpoint, trainer.config)
    check_data(
        TrainingData.from_checkpoint(checkpoint),
        trainer.config.get(TRAINING_DATA_KEY),
        settings.checkpoint,
        settings.allow_new_elements,
    )
    model.load_state_dict(state)
    if settings.weights == "ema" and checkpoint.get("ema") is not None:
        from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

        averaged = ExponentialMovingAverage(trainer.model.parameters(), 0.0)
        averaged.load_state_dict(checkpoint["ema"])
        averaged.copy_to(trainer.model.parameters())
    kept = take_normalizers(trainer, checkpoint, every=settings.normalizers == "checkpoint")
    shift = shift_energy_to_labels(trainer) if settings.shift_energy else None
    frozen = freeze_parameters(model, settings.freeze)
    if getattr(trainer, "ema", None) is not None:  # the average restarts from the loaded weights
        from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

        trainer.ema = ExponentialMovingAverage(trainer.model.parameters(), trainer.ema_decay)
    logging.info(
        f"fine-tuning from {settings.checkpoint} ({settings.weights} weights); "
        f"{len(frozen)} parameter tensor(s) frozen; fresh optimizer, schedule and normalizers"
        + (f" (the checkpoint's normalizers for {', '.join(kept)})" if kept else "")
        + (f"; energy shifted by {shift:.4g} kcal/mol to the fine-tuning labels" if shift is not None else "")
    )
    return frozen


def take_normalizers(trainer, checkpoint: dict, every: bool = False) -> list[str]:
    """Give ``trainer`` the checkpoint's normalizers: of every target it has none for, or with ``every``
    of every target; return those targets.

    An energy-only fine-tuning set fits no force normalizer; a direct force head pretrained to
    predict forces in units of the pretraining force RMS would otherwise be read as kcal/mol/Å.
    Gradient forces stay tied to the energy's normalizer (``PIWSLTrainer._tie_force_normalizer``).
    """
    from fairchem.core.modules.normalization.normalizer import create_normalizer

    taken = []
    for target, state in (checkpoint.get("normalizers") or {}).items():
        if target not in trainer.output_targets or (target in trainer.normalizers and not every):
            continue
        trainer.normalizers[target] = create_normalizer(state_dict=state).to(trainer.device)
        taken.append(target)
    tie = getattr(trainer, "_tie_force_normalizer", None)
    if taken and tie is not None:
        tie()
    return taken


def freeze_parameters(model: torch.nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Stop training the parameters whose names match a pattern; a pattern matching nothing is an error."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            prefixes = sorted({name.split(".")[0] for name in names})
            raise FinetuneError(
                f"finetune.freeze pattern {pattern!r} matches no parameter; top-level modules: {', '.join(prefixes)}"
            )
    frozen = []
    for name, parameter in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def shift_energy_to_labels(trainer) -> float:
    """Add to the energy normalizer's mean the mean of (label - prediction) over the training set; return it (kcal/mol).

    The loaded model, in evaluation mode, predicts every training structure once (in order, outside
    the training loader: its sampler is not advanced). A new level of theory moves total energies
    by a constant per composition that the element references of the fine-tuning set (``prepare_data.py
    --self-energies fit``) and of the pretraining set do not cancel; for one composition (one
    molecule's frames) this one shift removes it exactly, leaving the conformational variation to
    learn. Forces are unaffected (a constant has no gradient).
    """
    from torch.utils.data import DataLoader

    normalizer = trainer.normalizers.get("energy")
    if normalizer is None:
        raise FinetuneError("finetune.shift_energy needs an energy normalizer (dataset.train.transforms.normalizer)")
    loader = DataLoader(trainer.train_dataset, batch_size=trainer.config["optim"].get("eval_batch_size", 16),
                        shuffle=False, collate_fn=trainer.collater)  # fmt: skip
    model = trainer.model
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in loader:
            predicted = trainer._denorm_preds("energy", trainer._forward(batch)["energy"], batch).detach().reshape(-1)
            labels = batch.energy.to(predicted.device).reshape(-1)
            total += float((labels - predicted).double().sum())
            count += labels.numel()
    finally:
        model.train(was_training)
    shift = total / count
    normalizer.mean += shift
    return shift
