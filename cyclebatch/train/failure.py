"""A run that cannot write (a full disk, a quota, a read-only or forbidden folder) ends in one line: what
failed, where, the space free when it failed, and which intact checkpoint `--resume` continues from.

Every file the trainer writes goes through `writing`, which notes the destination and the free space on
the error at the moment of failure: after the temporary is removed the disk shows space again (a whole
checkpoint's worth), which would make the stop look groundless.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Iterator, Optional

from ..io.files import LOCATION_ERRORS, TMP_MARK, atomic_path

_WHAT = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
         errno.EROFS: "the file system is read-only"}


def free_bytes(path: Path) -> Optional[int]:
    where = next((p for p in [path, *path.parents] if p.exists()), None)
    try:
        return None if where is None else shutil.disk_usage(where).free
    except OSError:
        return None


def note(e: OSError, target: Path, measured_after_cleanup: bool = False) -> OSError:
    """Stamp where `e` happened and the free space now; the first stamp (the innermost) wins."""
    if getattr(e, "cb_target", None) is None:
        e.cb_target, e.cb_free, e.cb_after = Path(target), free_bytes(Path(target)), measured_after_cleanup
    return e


def as_os_error(e: BaseException) -> Optional[OSError]:
    """The OSError behind `e`: itself, one that torch.save buried under its own RuntimeError (its zip
    writer fails again while closing), or safetensors' 'I/O error: ... (os error 28)'."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__context__
    m = re.search(r"\(os error (\d+)\)", str(e))
    if m and type(e).__name__ == "SafetensorError":
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[Path]:
    """fileio.atomic_path, noting a failure's free space before the temporary is removed."""
    with atomic_path(path) as tmp:
        try:
            yield tmp
        except Exception as e:
            found = as_os_error(e)
            if found is None:
                raise
            raise note(found, path) from None


def real_name(path: Path) -> Path:
    """A temporary's destination (fileio.temp_name: MARK + pid + '-' + id + '-' + name)."""
    if path.name.startswith(TMP_MARK):
        parts = path.name[len(TMP_MARK):].split("-", 2)
        if len(parts) == 3:
            return path.with_name(parts[2])
    return path


def stop_line(e: BaseException, run_dir: Path, saved: Optional[tuple], resume_command: str) -> Optional[str]:
    """The one line for a write error no retry would escape; None for any other error."""
    err = as_os_error(e)
    if err is None or err.errno not in LOCATION_ERRORS:
        return None
    target = getattr(err, "cb_target", None)
    if target is None:  # not written through `writing`: the free space is as it is now
        target = real_name(Path(err.filename)) if err.filename else run_dir
        note(err, target, measured_after_cleanup=True)
    what = _WHAT.get(err.errno, "no permission to write there")
    room = "" if err.cb_free is None else f"; {err.cb_free / 2**20:,.1f} MiB free there"
    if room and not err.cb_after:
        room += " when it failed"
    fix = "make room" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    latest = run_dir / "checkpoints" / "latest.pt"
    if saved is not None and latest.is_file():
        epoch, _, iteration = saved
        then = (f"{latest} (epoch {epoch}, iteration {iteration}) is intact: {fix}, then continue from it with "
                f"`{resume_command}`")
    else:
        then = f"no checkpoint had been written yet: {fix}, then start the run again"
    return f"cannot write {target}: {what} ({err.strerror}){room}. Training stopped; {then}"


def resume_command(name: str, runs_dir: str) -> str:
    extra = "" if Path(runs_dir) == Path("runs") else f" --runs-dir {shlex.quote(str(runs_dir))}"
    return f"cyclebatch train --name {shlex.quote(name)} --resume{extra}"
