#!/usr/bin/env python
"""Train, validate or predict: ``python main.py --mode train --config configs/ani1x/painn_piwsl.yml``."""

import sys

from piwsl.cli import main

if __name__ == "__main__":
    sys.exit(main())
