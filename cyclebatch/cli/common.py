"""What every `cyclebatch` command shares: the consoles, one-line notes and errors, option help texts."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import CycleBatchError



def _console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr)
    if not c.is_terminal:
        # Logs, pipes, CI: Rich would hard-wrap every message at 80 columns; a log line must stay one line
        # (a terminal wraps long lines by itself). Wide, so that tables are laid out on one line a row too.
        c.soft_wrap, c.width = True, 10_000
    return c


out = _console()
err = _console(stderr=True)


def printable(text: str) -> str:
    """`text` with control characters (a newline in a file name) and undecodable bytes (a name that is
    not UTF-8, held as surrogate escapes) written as escapes, so a message stays one line and names the
    real bytes."""
    if text.isprintable():
        return text
    parts = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's stand-in for the byte o - 0xDC00
            parts.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable() or ch == " ":
            parts.append(ch)
        else:
            parts.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or
                         (f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"))
    return "".join(parts)


def quoted(name: str) -> str:
    """A file name as a shell would quote it where it needs quoting ($'a\\nb.png'), else as it is."""
    name = str(name)
    shown = printable(name)
    if shown == name:
        return name
    return "$'" + shown.replace("'", "\\'") + "'"


PRECISION_HELP = ("auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), fp32 (true fp32, also on CUDA), "
                  "tf32 (CUDA tensor cores, fp32 storage), bf16, fp16. Outputs that overflow are re-run in fp32.")


def plain(text) -> str:
    """User text (paths, reasons) to embed in a Rich line: markup-free and one line."""
    return escape(printable(str(text)))


def note(message: str) -> None:
    err.print(f"[yellow]note:[/] {escape(printable(message))}", highlight=False)


def log_line(message: str) -> None:
    """A long run's progress line (train, distill), on stderr."""
    err.print(plain(message), highlight=False, soft_wrap=True)


def warn_line(message: str) -> None:
    err.print(f"[yellow]warning:[/] {plain(message)}", highlight=False, soft_wrap=True)


def run_finished(summary: str, what: str, run_dir, runs_dir) -> None:
    """The last line of train and distill: where the run is and the name `run -m` loads it by."""
    from pathlib import Path

    load_as = Path(run_dir).name if Path(runs_dir) == Path("runs") else run_dir
    err.print(f"{plain(summary)}; {what} in {plain(run_dir)} (load with: {plain(load_as)})", highlight=False,
              soft_wrap=True)


def error_line(message: str) -> None:
    """One `error: ...` line: markup-free (brackets in names and install hints stay), one line."""
    err.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    error_line(message)
    raise typer.Exit(code)


def check_settings(config) -> None:
    """A run's config (train, distill) validated before any folder or model is read: a mistake in the flags is
    a usage error, exit 2."""
    try:
        config.validate()
    except CycleBatchError as e:
        fail(str(e), 2)


def check_output_file(dst: Path, overwrite: bool) -> None:
    """Before any work: an output file that exists (without --overwrite), is a folder, or whose place is
    under a file or not writable is refused in one line."""
    if dst.is_dir():
        fail(f"{dst}: is a folder; name the output file", 2)
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        fail(f"{dst}: exists; pass --overwrite to replace it")
    for p in dst.parents:
        if p.exists():
            if not p.is_dir():
                fail(f"cannot write {dst}: {p} is a file, not a folder", 2)
            if not os.access(p, os.W_OK | os.X_OK):  # also EROFS for root on a read-only mount
                fail(f"cannot write {dst}: {p} is read-only or not writable by you")
            return


@contextlib.contextmanager
def writing(dst: Path):
    """A write error of the output (full disk, read-only, no permission) as one line, exit 1."""
    from ..io.files import as_location_error, location_problem

    try:
        yield
    except Exception as e:
        if isinstance(e, OSError):
            fail(location_problem(e, dst) or f"cannot write {dst} ({e.strerror or e})")
        os_error = as_location_error(e)
        if os_error is None:
            raise
        fail(location_problem(os_error, dst))


def parse_memory(text: str) -> int:
    """'6G', '512M', '2.5GB', '1000000' -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise CycleBatchError(f"cannot read memory size '{text}' (use e.g. 6G or 512M)") from None
    if not math.isfinite(value) or value < 1:
        raise CycleBatchError(f"memory size '{text}' must be a positive amount (e.g. 6G or 512M)")
    return int(value)


def parse_bytes(text: Optional[str]) -> Optional[int]:
    """--max-memory as bytes; a usage error (exit 2) before any work when it is not a positive size."""
    try:
        return None if text is None else parse_memory(text)
    except CycleBatchError as e:
        fail(f"--max-memory: {e}", 2)


TILE_HELP = "Tile every image with tiles of this size (px); default: only images too big for --max-memory."
MEMORY_HELP = "Memory one image may take before it is tiled (6G, 512M); default: half of what is free."
BACKEND_HELP = ("What runs full-frame passes on the CPU: torch (cyclebatch's own engine), openvino "
                "(pip install 'cyclebatch\\[openvino]') or auto (the faster of the two on this CPU, per image size class; "
                "measured once and cached). Tiles and shared video statistics always run on torch.")
STATS_HELP = "Tile InstanceNorm statistics: exact (whole image, seamless) or per-tile (naive, for comparison)."
STORAGE_HELP = ("For s3:// gs:// ... URLs: fsspec options as JSON, e.g. '{\"endpoint_url\": \"http://host:9000\"}' "
                "(credentials come from the usual environment variables and files).")
BATCHNORM_HELP = ("BatchNorm models: running statistics (official test.py --eval) or per-image ones "
                  "(official test.py default).")


def _sigterm_as_interrupt() -> None:
    """Ctrl-C and SIGTERM both stop a run as an interrupt (exit 130, nothing half-written), and are noted
    for the loops to see even where a C callback swallowed the KeyboardInterrupt (errors.note_interrupt)."""
    import signal

    from ..errors import note_interrupt

    def handler(signum, frame):
        note_interrupt()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
