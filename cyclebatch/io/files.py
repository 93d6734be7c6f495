"""Atomic file writes: a temporary name in the target's folder, renamed into place only when complete."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator

# Temporary files carry this marker so a later run can recognise (and sweep) leftovers of a killed one.
TMP_MARK = ".cyclebatch-tmp-"


# A temporary whose writer cannot be proven dead (another host, container or boot wrote it, or a name from
# before writers were identified) is swept only when nothing has touched it for this long.
FOREIGN_TEMP_AGE_S = 24 * 3600


@functools.lru_cache(maxsize=1)
def writer_identity() -> str:
    """Where a pid means this process: the host, its boot and the PID namespace, hashed to 8 hex digits.
    A pid is only checked for liveness when the temporary was written under the same identity: a folder
    shared by containers or hosts (NFS, job arrays) holds other writers' pids that mean nothing here."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            parts.append("?")
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


def temp_name(path: Path) -> Path:
    # The writer's pid and identity let a later run tell a dead run's leftovers from a live writer's file;
    # the real suffix stays last because encoders (PIL, OpenCV, PyAV) pick the format from it.
    return path.with_name(f"{TMP_MARK}{os.getpid()}@{writer_identity()}-{uuid.uuid4().hex[:8]}-{path.name}")


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
    except BaseException as e:
        note_free_space(e, path)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def note_free_space(e: BaseException, dst: Path) -> None:
    """Remember on the error (and on the OSError behind it) how much space was free where it failed, before
    the partial file is removed: the user needs how full the disk was, not how full it is after the cleanup."""
    found = as_location_error(e)
    if found is None or getattr(found, "free_at_failure", None) is not None:
        return
    free = free_space(dst.parent)
    for err in {id(e): e, id(found): found}.values():
        with contextlib.suppress(AttributeError):
            err.free_at_failure = free


def free_space(path: Path) -> "int | None":
    """Bytes free on the file system of `path` (or of its nearest existing folder); None where unknown."""
    where = next((q for q in [path, *path.parents] if q.exists()), None)
    try:
        return None if where is None else shutil.disk_usage(where).free
    except OSError:
        return None


# Write errors that are the location's problem, not one file's: every later write there fails the same way.
LOCATION_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def location_problem(e: BaseException, dst: Path) -> "str | None":
    """For a write error that no later write to that place would escape (a full disk, a quota, a
    read-only or forbidden folder), what and where, with the space left; None for other errors."""
    if not isinstance(e, OSError) or e.errno not in LOCATION_ERRORS:
        return None
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only"}.get(e.errno, "no permission to write there")
    at_failure = getattr(e, "free_at_failure", None)
    n = at_failure if at_failure is not None else free_space(dst.parent)
    when = " when the write failed" if at_failure is not None else ""
    free = "" if n is None else f"; {n / 2**20:,.1f} MiB free there{when}"
    return f"cannot write {dst}: {what} ({e.strerror}){free}"


_ERRNO_TEXTS = {os.strerror(code): code for code in LOCATION_ERRORS}


def os_error_behind(e: BaseException) -> "OSError | None":
    """The OSError behind `e`: itself; one a library buried under its own error while cleaning up (torch's
    zip writer fails again on close); safetensors' '(os error 28)'; or the C library's message in a library's
    own error type (OpenVINO, C++ writers: 'No space left on device'). None where there is none."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__context__
    text = str(e)
    m = re.search(r"\(os error (\d+)\)", text)
    codes = [int(m.group(1))] if m else [code for message, code in _ERRNO_TEXTS.items() if message in text][:1]
    if not codes:
        return None
    found = OSError(codes[0], os.strerror(codes[0]))
    found.free_at_failure = getattr(e, "free_at_failure", None)
    return found


def as_location_error(e: BaseException) -> "OSError | None":
    """os_error_behind(e) where it is the location's problem (full disk, quota, read-only, forbidden)."""
    found = os_error_behind(e)
    return found if found is not None and found.errno in LOCATION_ERRORS else None


def temp_destination(tmp: Path) -> Path:
    """The file a temporary (temp_name) was going to become; any other path as it is."""
    if tmp.name.startswith(TMP_MARK):
        parts = tmp.name[len(TMP_MARK):].split("-", 2)
        if len(parts) == 3:
            return tmp.with_name(parts[2])
    return tmp


def is_temp(path: Path) -> bool:
    return path.name.startswith(TMP_MARK)


def sweep_dead_temps(folder: Path, recursive: bool = True) -> int:
    """Remove temporary files left in `folder` (and below it, if `recursive`) by writers that are no longer
    running."""
    if not folder.is_dir():
        return 0
    found = folder.rglob(f"{TMP_MARK}*") if recursive else folder.glob(f"{TMP_MARK}*")
    return sum(_remove_if_dead(p) for p in found)


def _remove_if_dead(p: Path) -> bool:
    owner = p.name[len(TMP_MARK):].split("-", 1)[0]
    pid_text, _, identity = owner.partition("@")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if identity == writer_identity():
        if pid == os.getpid() or _alive(pid):
            return False
    elif not _untouched_for(p, FOREIGN_TEMP_AGE_S):
        return False  # another host's or container's writer, maybe alive: only age can prove it gone
    try:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    except OSError:
        return False
    return True


def _untouched_for(p: Path, seconds: float) -> bool:
    """True when neither `p` nor (for a folder) anything directly in it changed in the last `seconds`."""
    try:
        latest = p.lstat().st_mtime
        if p.is_dir() and not p.is_symlink():
            for q in p.iterdir():
                latest = max(latest, q.lstat().st_mtime)
    except OSError:
        return False
    return time.time() - latest > seconds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
