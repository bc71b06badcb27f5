"""piwsl: physics-informed weak supervision for machine-learned interatomic potentials.

Importing the package registers the ``piwsl`` trainer in fairchem's registry, so an OCP config can
say ``trainer: piwsl`` once ``piwsl`` is imported (``main.py`` does that).
"""

import piwsl._warnings  # noqa: F401  (first: before fairchem is imported)
import piwsl.models  # noqa: F401
from piwsl.config import PRESETS, PIWSLConfig, PIWSLConfigError
from piwsl.displacements import AdversarialDisplacementSampler, RandomDisplacementSampler
from piwsl.losses import PISCLoss, PITCLoss, WeakLabelLoss, taylor_energy
from piwsl.trainer import PIWSLTrainer

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
