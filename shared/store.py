"""Folders written whole or not at all: what every build store of the suite (ONNX builds, seeded heads, distilled
students) does to never leave half a model where a later load would take it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_folder(target: Path, write: Callable[[Path], None], done_file: str) -> Path:
    """`target`, written by `write(scratch)` into a temporary folder beside it and renamed into place, unless
    `target/done_file` is there already. A folder at `target` without `done_file` (left by a crash) is replaced; if
    another process finished `target` meanwhile, its folder is kept and ours dropped. On any error (a Stop
    included) the temporary folder is removed and the error raised."""
    target = Path(target)
    if (target / done_file).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(scratch)
        if (target / done_file).is_file():  # another process finished first
            shutil.rmtree(scratch)
        else:
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target
