"""The one exception type users see (its message is a single line naming the file and the reason), the
one test for running out of memory, which engine, tiling and video all retry rather than report, and the
record of an interrupt."""

import threading

_interrupted = threading.Event()


class CycleBatchError(Exception):
    """An expected failure (bad file, missing model, unreachable host): shown as one line, no traceback."""


def first_line(e: BaseException, limit: int = 200, skip: str = "") -> str:
    """An exception's message cut to one line for a one-line error: its first non-empty line (not starting
    with `skip`), at most `limit` characters; the exception's type name when it says nothing."""
    for line in str(e).splitlines():
        line = line.strip()
        if line and not (skip and line.startswith(skip)):
            return line if len(line) <= limit else line[:limit] + "..."
    return type(e).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """A device (or host) allocation failed: the caller retries smaller rather than failing the file."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def note_interrupt() -> None:
    """A signal handler saw Ctrl-C or SIGTERM (cli_common installs it). Kept as a flag besides the
    KeyboardInterrupt it raises: raised inside a C library's callback, that exception can be reported as
    'ignored' and lost, and the run would go on to the end."""
    _interrupted.set()


def raise_if_interrupted() -> None:
    """Between batches: an interrupt whose KeyboardInterrupt was lost stops the run here."""
    if _interrupted.is_set():
        raise KeyboardInterrupt
