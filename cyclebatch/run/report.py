"""`run --report`: OUT/report.html, every image's input|output thumbnails, status and reason, the timings,
the model and the settings, on the shared page (`htmlpage`).

Thumbnails are small JPEG files in OUT/.cyclebatch-report/ (two-level hashed folders), referenced by
relative URL, not data URIs: 100,000 entries as data URIs would make a page of hundreds of MB that no
browser opens, while files are fetched only for the page of rows on screen (lazy <img>). The outputs
themselves are not used as thumbnails: they are full size (a page of 100 of them is GBs of decoding)
and the inputs may not be reachable by a relative URL at all (another disk, a bucket). The folder is
hidden so that a later run that takes OUT as its input never translates the thumbnails. They are made by
the writer that already holds both images decoded (no second decode), and written atomically like
every output.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..io import storage

THUMBS = ".cyclebatch-report"
PAGE = "report.html"
LONGEST = 160  # px: a thumbnail's longest side


def thumb_rel(src: object, which: str) -> str:
    """Where the thumbnail of `src` lives, relative to the output root ('in' or 'out')."""
    h = hashlib.sha1(str(src).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{THUMBS}/{h[:2]}/{h[2:18]}.{which}.jpg"


def _eight_bit(rgb: np.ndarray) -> np.ndarray:
    return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else rgb


def write_thumbnails(out_root, src, in_rgb: np.ndarray, out_rgb: np.ndarray, options: Optional[dict] = None) -> None:
    """Input and output thumbnails of one image (called by the writer, after the output is written)."""
    from ..io.htmlpage import jpeg_thumbnail

    for which, rgb in (("in", in_rgb), ("out", out_rgb)):
        data = jpeg_thumbnail(_eight_bit(rgb), longest=LONGEST)
        _write(out_root, thumb_rel(src, which), data, options)


def _write(out_root, rel: str, data: bytes, options: Optional[dict]) -> None:
    if isinstance(out_root, str):
        storage.write_bytes(storage.join(out_root, rel), data, options)
        return
    from ..io.files import atomic_path

    path = Path(out_root) / rel
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _existing_thumbs(out_root, options: Optional[dict]) -> set[str]:
    """The thumbnails present (one listing), as paths relative to the output root."""
    if isinstance(out_root, str):
        base = storage.join(out_root, THUMBS)
        try:
            return {f"{THUMBS}/{rel.as_posix()}" for _, rel in storage.files_under(base, options)}
        except OSError:
            return set()
    folder = Path(out_root) / THUMBS
    if not folder.is_dir():
        return set()
    return {p.relative_to(out_root).as_posix() for p in folder.rglob("*.jpg")}


def rows_for(jobs: Sequence, skipped: Sequence, problems: Sequence[tuple[str, str]],
             failures: Sequence[tuple[str, str]], have: set[str]) -> list[list[str]]:
    """[input thumb, output thumb, input, output, status, reason] for every image the run looked at."""
    failed = dict(failures)
    rows = []

    def thumb(src, which):
        rel = thumb_rel(src, which)
        return rel if rel in have else ""

    for job in jobs:
        reason = failed.get(str(job.src))
        if reason is None:
            rows.append([thumb(job.src, "in"), thumb(job.src, "out"), str(job.src), str(job.dst), "translated", ""])
        else:
            rows.append(["", "", str(job.src), str(job.dst), "failed", reason])
    for job in skipped:
        rows.append([thumb(job.src, "in"), thumb(job.src, "out"), str(job.src), str(job.dst), "skipped",
                     "its output exists (use --overwrite to redo it)"])
    rows += [["", "", item, "", "failed", reason] for item, reason in problems]
    return rows


def write_run_report(out_root, work, summary, settings: dict, timings: dict, options: Optional[dict] = None):
    """Build and write OUT/report.html; returns where it went."""
    from ..io.htmlpage import Page

    rows = rows_for(work.jobs, work.skipped, work.problems, summary.failures, _existing_thumbs(out_root, options))
    page = Page("cyclebatch run", subtitle=f"{summary.translated} translated, {summary.skipped} skipped, "
                                           f"{summary.failed} failed -> {out_root}")
    page.table("Timings", [("wall time", f"{summary.seconds:.2f} s"),
                           ("images per second", f"{summary.images_per_second:.3f}"),
                           ("megapixels per second", f"{summary.megapixels / max(summary.seconds, 1e-9):.3f}"),
                           *[(k, v) for k, v in timings.items()],
                           ("written", time.strftime("%Y-%m-%d %H:%M:%S %z"))])
    page.table("Model and settings", [(k, v) for k, v in settings.items()])
    if summary.failures:
        page.entries("Failures", ["input", "reason"], [[p, r] for p, r in summary.failures], page_size=100)
    page.entries("Images", ["input", "output", "source", "destination", "status", "reason"], rows,
                 image_columns=("input", "output"), page_size=100)
    if isinstance(out_root, str):
        target = storage.join(out_root, PAGE)
        storage.write_bytes(target, page.html().encode("utf-8"), options)
        return target
    return page.write(Path(out_root) / PAGE)
