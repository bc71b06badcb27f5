"""One training process per run: an exclusive ``flock`` on ``main.lock`` in the run's checkpoint directory.

Two ``main.py`` processes on the same run id would both train, write the same tensorboard logs
and race on the checkpoint's temporary file. The lock is released by the kernel when its holder
exits, however it exits, so it never goes stale; the file holds the holder's PID for the message.
The experiment runner's own ``runner.lock`` in the same directory is a different file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "main.lock"


class RunLockedError(RuntimeError):
    """Another process is training the same run; the message names its PID."""


@contextlib.contextmanager
def locked_run(checkpoint_dir: Path) -> Iterator[Path]:
    """Hold the run's lock while the block runs; raise ``RunLockedError`` if another process holds it."""
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(
                f"run {checkpoint_dir.name} is being trained by process {holder} (it holds {path}); "
                "wait for it to finish or stop it, or give this run another --timestamp-id"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield path
