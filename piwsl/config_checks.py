"""Checks of a whole ``main.py`` config: unknown keys (with the closest valid name), bad numbers, bad overrides.

fairchem silently drops top-level keys it does not know and ignores unknown ``optim`` keys, so a
misspelled section (``piswl:``, ``optimm:``) or override (``--optim.max_stepz=5``) trains with
defaults without a word. Here every top-level key must be one fairchem or piwsl reads, every
``optim`` key one that fairchem's trainer, its learning-rate schedulers or piwsl read, and the
numbers that size a run must be positive (``max_epochs`` may be 0); ``model`` keys must be arguments of the backbone's
constructor (which would otherwise fail with a traceback). Errors are ``ConfigKeyError`` naming
key and value.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

import torch

#: Top-level keys: fairchem's config sections, the keys its CLI adds, and piwsl's own sections.
TOP_LEVEL_KEYS = frozenset({
    "trainer", "task", "model", "outputs", "optim", "loss_functions", "evaluation_metrics", "dataset", "logger",
    "slurm", "hide_eval_progressbar", "use_cuda_visibile_devices", "includes",
    "mode", "identifier", "timestamp_id", "seed", "is_debug", "run_dir", "print_every", "amp", "checkpoint", "cpu",
    "submit", "summit", "world_size", "distributed_backend", "gp_gpus", "local_rank",
    "piwsl", "units", "dataset_preparation", "finetune",
})  # fmt: skip
#: ``optim`` keys read by fairchem 1.3.0's base and OCP trainers, its warm-up schedule and piwsl.
OPTIM_KEYS = frozenset({
    "batch_size", "eval_batch_size", "num_workers", "lr_initial", "optimizer", "optimizer_params", "weight_decay",
    "max_epochs", "eval_every", "checkpoint_every", "clip_grad_norm", "ema_decay", "scheduler", "scheduler_params",
    "warmup_steps", "warmup_factor", "lr_gamma", "lr_milestones", "energy_coefficient", "force_coefficient",
    "loss_energy", "loss_forces", "load_balancing", "load_balancing_on_error", "load_datasets_and_model_then_exit",
    "max_steps", "piwsl", "finetune", "early_stopping", "max_wall_seconds",
})  # fmt: skip
#: ``optim`` numbers: (integer only, whether ``0`` is allowed, allowed values in words). ``max_epochs: 0``
#: builds a trainer that trains nothing (used to save untrained models); ``max_steps`` counts steps to train.
OPTIM_NUMBERS = {
    "max_steps": (True, False, "a positive integer"),
    "max_epochs": (True, True, "an integer >= 0"),
    "batch_size": (True, False, "a positive integer"),
    "eval_batch_size": (True, False, "a positive integer"),
    "lr_initial": (False, False, "a positive number"),
}


class ConfigKeyError(ValueError):
    """An unknown key or an invalid value in a config or an override; the message names it."""


def closest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the most similar of ``choices``, or an empty string."""
    match = difflib.get_close_matches(str(name), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def scheduler_keys() -> frozenset[str]:
    """Keyword arguments of torch's learning-rate schedulers: fairchem passes matching ``optim`` keys to them."""
    names = set()
    for _, cls in inspect.getmembers(torch.optim.lr_scheduler, inspect.isclass):
        try:
            parameters = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            continue
        names.update(name for name, p in parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD)
    return frozenset(names - {"self", "optimizer"})


def check_overrides(overrides: list[str], options: Iterable[str]) -> None:
    """Each command-line word fairchem's parser left over must be a dotted override ``--a.b=value``."""
    for word in overrides:
        name = word[2:].split("=", 1)[0] if word.startswith("--") else ""
        if not name:
            raise ConfigKeyError(f"unexpected argument {word!r}; overrides are written --section.key=value")
        if "=" not in word:
            if "." in name:
                raise ConfigKeyError(f"override {word} has no value: write {word}=VALUE")
            raise ConfigKeyError(f"unknown option {word}{closest(word, options)}; see main.py --help")
        if "=" in word.split("=", 1)[1]:
            raise ConfigKeyError(f"override {word}: the value may not contain '='")


def check_config(config: dict[str, Any]) -> None:
    """Unknown top-level and ``optim`` keys, non-mapping sections and non-positive run sizes are errors."""
    unknown = sorted(set(config) - TOP_LEVEL_KEYS)
    if unknown:
        key = unknown[0]
        raise ConfigKeyError(f"unknown top-level config key '{key}'{closest(key, TOP_LEVEL_KEYS)}")
    for section in ("optim", "model", "piwsl"):
        value = config.get(section)
        if value is not None and not isinstance(value, dict):
            raise ConfigKeyError(f"config section '{section}' must be a mapping of keys to values, not {value!r}")
    optim = config.get("optim") or {}
    allowed = OPTIM_KEYS | scheduler_keys()
    unknown = sorted(set(optim) - allowed)
    if unknown:
        key = unknown[0]
        raise ConfigKeyError(f"unknown key 'optim.{key}'{closest(key, allowed)}")
    for key, (integer, zero_allowed, allowed) in OPTIM_NUMBERS.items():
        value = optim.get(key)
        if value is None:
            continue
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        in_range = number and (value >= 0 if zero_allowed else value > 0)
        if not in_range or (integer and value != int(value)):
            raise ConfigKeyError(f"optim.{key} = {value!r}; allowed: {allowed}")


def constructor_keys(cls: type) -> frozenset[str] | None:
    """Keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the bases; ``None``: any."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return frozenset(names - {"self"})
    return None


def check_model_keys(model: dict[str, Any], cls: type) -> None:
    """Every ``model`` key but ``name`` must be an argument of the backbone class ``cls``."""
    allowed = constructor_keys(cls)
    if allowed is None:
        return
    unknown = sorted(set(model) - allowed - {"name"})
    if unknown:
        key = unknown[0]
        raise ConfigKeyError(f"unknown key 'model.{key}' for backbone '{model.get('name')}'{closest(key, allowed)}")
