"""piwsl: physics-informed weak supervision for machine-learned interatomic potentials.

Importing the package is light: the losses, samplers and config need PyTorch only. The trainer
and piwsl's backbones need fairchem; ``import piwsl.trainer`` (or the first use of
``piwsl.PIWSLTrainer``) loads them and registers trainer ``piwsl`` and the backbones in fairchem's
registry. fairchem's own CLI finds the trainer by its dotted name
(``trainer: piwsl.trainer.PIWSLTrainer``), which imports it.
"""

from __future__ import annotations

import piwsl._warnings  # noqa: F401  (first: before anything imports fairchem)
from piwsl.config import PRESETS, PIWSLConfig, PIWSLConfigError
from piwsl.displacements import AdversarialDisplacementSampler, RandomDisplacementSampler
from piwsl.losses import PISCLoss, PITCLoss, WeakLabelLoss, taylor_energy

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AdversarialDisplacementSampler",
    "PIWSLConfig",
    "PIWSLConfigError",
    "PIWSLTrainer",
    "PISCLoss",
    "PITCLoss",
    "RandomDisplacementSampler",
    "WeakLabelLoss",
    "taylor_energy",
]


def __getattr__(name: str):
    """``piwsl.PIWSLTrainer`` imports the trainer (and fairchem) on first use."""
    if name == "PIWSLTrainer":
        from piwsl.trainer import PIWSLTrainer

        return PIWSLTrainer
    raise AttributeError(f"module 'piwsl' has no attribute {name!r}")
