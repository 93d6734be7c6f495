"""Atomic file writes: a temporary name in the target's folder, renamed into place only when complete."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

# Temporary files carry this marker so a later run can recognise (and sweep) leftovers of a killed one.
TMP_MARK = ".cyclebatch-tmp-"


def temp_name(path: Path) -> Path:
    # Keep the real suffix last: encoders (PIL, OpenCV, PyAV) pick the format from it.
    return path.with_name(f"{TMP_MARK}{uuid.uuid4().hex[:12]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def is_temp(path: Path) -> bool:
    return path.name.startswith(TMP_MARK)
