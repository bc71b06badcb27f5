"""Model backbones registered in fairchem's registry when ``piwsl`` is imported."""

import piwsl.models.gradient_forces  # noqa: F401
import piwsl.models.spinconv  # noqa: F401
