"""Reading and writing the project's files: one place for how a file is read and how it is replaced."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipesynth.errors import PipesynthError


def read_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise PipesynthError(f"{path}: cannot read ({err.strerror})") from None


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temporary file in the same folder, then rename over the target."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
