"""Silence warnings that fairchem-core 1.3.0 triggers under torch 2.13 and users cannot act on.

Imported first by ``piwsl/__init__.py``, before anything imports fairchem.
"""

import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module=r"fairchem\.")
warnings.filterwarnings("ignore", message=r".*jittable.*", category=UserWarning)
