"""Keep large CPU tensors in glibc's heap instead of fresh ``mmap`` pages.

By default glibc serves allocations above a (dynamic, at most 32 MiB) threshold with ``mmap`` and
returns them to the kernel on ``free``; every new large tensor then costs page faults on first
touch. A PIWSL step allocates activations for three geometries, so on CPU this overhead grows
faster than the work (measured by ``scripts/benchmark_step.py``: the stacked 3B-graph forward was
up to 1.7x slower than three separate ones before this tuning). Raising the thresholds keeps freed
blocks for reuse. Linux/glibc only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit on 64-bit
_KEEP = 512 * 2**20


def tune_malloc_for_tensors() -> bool:
    """Apply the settings; return whether they took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    applied = all(
        mallopt(parameter, value) == 1
        for parameter, value in ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _KEEP), (_M_TOP_PAD, _KEEP))
    )
    if applied:
        logging.info("glibc malloc tuned for tensor reuse (mmap threshold 32 MiB, trim threshold 512 MiB)")
    return applied
