"""Atomic file writes: a temporary name in the target's folder, renamed into place only when complete."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

# Temporary files carry this marker so a later run can recognise (and sweep) leftovers of a killed one.
TMP_MARK = ".cyclebatch-tmp-"


def temp_name(path: Path) -> Path:
    # The writer's pid lets a later run tell a dead run's leftovers from a live writer's file;
    # the real suffix stays last because encoders (PIL, OpenCV, PyAV) pick the format from it.
    return path.with_name(f"{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


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


# Write errors that are the location's problem, not one file's: every later write there fails the same way.
LOCATION_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def location_problem(e: BaseException, dst: Path) -> "str | None":
    """For a write error that no later write to that place would escape (a full disk, a quota, a
    read-only or forbidden folder), what and where, with the space left; None for other errors."""
    if not isinstance(e, OSError) or e.errno not in LOCATION_ERRORS:
        return None
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only"}.get(e.errno, "no permission to write there")
    where = next((p for p in [dst.parent, *dst.parents] if p.exists()), dst.parent)
    try:
        free = f"; {shutil.disk_usage(where).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = ""
    return f"cannot write {dst}: {what} ({e.strerror}){free}"


def is_temp(path: Path) -> bool:
    return path.name.startswith(TMP_MARK)


def sweep_dead_temps(folder: Path) -> int:
    """Remove temporary files left in `folder` (recursively) by writers that are no longer running."""
    if not folder.is_dir():
        return 0
    return sum(_remove_if_dead(p) for p in folder.rglob(f"{TMP_MARK}*"))


def sweep_dead_temps_of(path: Path) -> int:
    """Remove what dead writers left while writing `path` itself (a file or a folder), and nothing else."""
    if not path.parent.is_dir():
        return 0
    return sum(_remove_if_dead(p) for p in path.parent.glob(f"{TMP_MARK}*-{glob.escape(path.name)}"))


def _remove_if_dead(p: Path) -> bool:
    try:
        pid = int(p.name[len(TMP_MARK):].split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid() or _alive(pid):
        return False
    try:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    except OSError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
