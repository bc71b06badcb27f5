"""Quiet the warnings that fairchem-core 1.3.0 repeats under torch 2.13 and users cannot act on.

Imported first by ``piwsl/__init__.py``, before anything imports fairchem.

- FutureWarnings from fairchem's modules and PaiNN's deprecated ``jittable`` call are dropped.
- fairchem logs "Scale factor X is not fitted" for every scale factor of the model at the start of
  training and at every validation (dozens of lines per run). Unfitted scale factors leave their
  layers unscaled, the normal case when training from scratch; the notice is kept once per process.
"""

import logging
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module=r"fairchem\.")
warnings.filterwarnings("ignore", message=r".*jittable.*", category=UserWarning)


class _ScaleFactorNoticeOnce(logging.Filter):
    """Turns fairchem's per-module "Scale factor ... is not fitted" warnings into one line per process."""

    def __init__(self) -> None:
        super().__init__()
        self.shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not (message.startswith("Scale factor ") and " is not fitted." in message):
            return True
        if self.shown:
            return False
        self.shown = True
        record.msg = (
            "the model's scale factors are not fitted, so they leave their layers unscaled (normal when training "
            "from scratch; fairchem's scaling/fit.py fits them); this notice is shown once"
        )
        record.args = ()
        return True


logging.getLogger().addFilter(_ScaleFactorNoticeOnce())
