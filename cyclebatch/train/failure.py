"""A run that cannot write (a full disk, a quota, a read-only or forbidden folder) ends in one line: what
failed, where, the space free when it failed, and which intact checkpoint `--resume` continues from.

Every file the trainer writes goes through `writing`, which notes the destination and the free space on
the error at the moment of failure: after the temporary is removed the disk shows space again (a whole
checkpoint's worth), which would make the stop look groundless.
"""

from __future__ import annotations

import contextlib
import errno
import shlex
from pathlib import Path
from typing import Iterator, Optional

from ..io.files import LOCATION_ERRORS, atomic_path, free_space, os_error_behind, temp_destination

_WHAT = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
         errno.EROFS: "the file system is read-only"}


def note(e: OSError, target: Path, measured_after_cleanup: bool = False) -> OSError:
    """Stamp where `e` happened and the free space: as the atomic write measured it when it failed, else
    now. The first stamp (the innermost) wins."""
    if getattr(e, "cb_target", None) is None:
        at_failure = getattr(e, "free_at_failure", None)
        e.cb_target = Path(target)
        e.cb_free = at_failure if at_failure is not None else free_space(Path(target))
        e.cb_after = measured_after_cleanup and at_failure is None
    return e


@contextlib.contextmanager
def writing(path: Path) -> Iterator[Path]:
    """io.files.atomic_path (which notes the free space when the write failed), with the target noted too,
    and a library's own error type unwrapped to its OSError."""
    with atomic_path(path) as tmp:
        try:
            yield tmp
        except Exception as e:
            found = os_error_behind(e)
            if found is None:
                raise
            raise note(found, path) from None


def stop_line(e: BaseException, run_dir: Path, saved: Optional[tuple], resume_command: str) -> Optional[str]:
    """The one line for a write error no retry would escape; None for any other error. `saved`: what
    checkpoints/latest.pt holds, (epoch, step, iteration) for `train`, (iteration,) for `distill`."""
    err = os_error_behind(e)
    if err is None or err.errno not in LOCATION_ERRORS:
        return None
    target = getattr(err, "cb_target", None)
    if target is None:  # not written through `writing`: the free space is as it is now
        target = temp_destination(Path(err.filename)) if err.filename else run_dir
        note(err, target, measured_after_cleanup=True)
    what = _WHAT.get(err.errno, "no permission to write there")
    room = "" if err.cb_free is None else f"; {err.cb_free / 2**20:,.1f} MiB free there"
    if room and not err.cb_after:
        room += " when it failed"
    fix = "make room" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    latest = run_dir / "checkpoints" / "latest.pt"
    if saved is not None and latest.is_file():
        at = f"epoch {saved[0]}, iteration {saved[-1]}" if len(saved) == 3 else f"iteration {saved[-1]}"
        then = f"{latest} ({at}) is intact: {fix}, then continue from it with `{resume_command}`"
    else:
        then = f"no checkpoint had been written yet: {fix}, then start the run again"
    return f"cannot write {target}: {what} ({err.strerror}){room}. Training stopped; {then}"


def resume_command(name: str, runs_dir: str, command: str = "train") -> str:
    extra = "" if Path(runs_dir) == Path("runs") else f" --runs-dir {shlex.quote(str(runs_dir))}"
    return f"cyclebatch {command} --name {shlex.quote(name)} --resume{extra}"
