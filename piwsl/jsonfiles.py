"""Writing results files: JSON that a reader never sees half-written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, content: Any) -> None:
    """Write JSON to ``path`` (mode 0644: readable by others) through a temporary file and a rename.

    Creates the parent directories; values JSON cannot hold (paths, dates) are written as strings.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(handle, 0o644)
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream, indent=1, default=str)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
