"""Inputs -> (source, destination) jobs: files, folders (recursive) and globs, mirrored under the output.

Local locations are `Path`s; object-storage URLs (s3://, gs://, memory://...) are `str`s, listed through
`storage` (see there). Either side may be either kind.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, Union

from . import storage
from ..errors import CycleBatchError
from .files import is_temp
from .images import IMAGE_SUFFIXES, not_regular


Location = Union[Path, str]  # a local path, or an object-storage URL


@dataclass(frozen=True)
class Job:
    src: Location
    dst: Location


@dataclass
class Plan:
    jobs: list[Job]  # to translate
    skipped: list[Job]  # output exists already (a re-run resumes)
    problems: list[tuple[str, str]]  # (input, reason): inputs that name nothing usable
    ignored: dict = field(default_factory=dict)  # {".gif": 3}: pictures in input folders that run does not read


# Picture formats a folder may hold that `run` leaves alone: counted and named once, never silently dropped.
OTHER_PICTURES = {".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".psd", ".svg", ".dng", ".cr2", ".cr3",
                  ".nef", ".arw", ".raf", ".orf", ".rw2"}


def unwritable_reason(suffix: str) -> str:
    """Why a file named directly cannot keep its own format as the output, and what to do instead."""
    hint = " (an animated GIF: `cyclebatch video IN.gif OUT.gif` translates every frame)" if suffix.lower() == ".gif" else ""
    return (f"run does not write '{suffix}' images; pass --ext png (or jpg, webp, tif) for a translated still"
            f"{hint}")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not is_temp(p)


def _walk(folder: Path, exclude: Optional[Path], ignored: Optional[Counter] = None) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        rootp = Path(root)
        # Never descend into the output (it may sit inside the input) or hidden folders.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or (rootp / d).resolve() != exclude))
        found += [rootp / f for f in sorted(files) if _is_image(rootp / f)]
        if ignored is not None:
            ignored.update(s for s in (Path(f).suffix.lower() for f in files if not f.startswith("."))
                           if s in OTHER_PICTURES)
    return found


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base = [p for p in parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]]
    return Path(*base) if base else Path(".")


def _is_image_name(name: str) -> bool:
    return _is_image(Path(PurePosixPath(name).name))


def _expand_url(item: str, several: bool, options: Optional[dict]) -> tuple[list, list]:
    """The object-storage twin of the local branch of `expand`: prefix, single object or glob."""
    try:
        if glob.has_magic(item):
            base = item[: item.index(next(c for c in item if c in "*?["))].rsplit("/", 1)[0]
            files = [u for u in storage.glob(item, options) if _is_image_name(u)]
            if not files:
                return [], [(item, "the pattern matches no images")]
            fs, root = storage.filesystem(base, options)
            return [(u, PurePosixPath(fs._strip_protocol(u)[len(root.rstrip("/")):].lstrip("/"))) for u in files], []
        under = [(u, rel) for u, rel in storage.files_under(item, options)
                 if _is_image_name(u) and not any(part.startswith(".") for part in rel.parts)]
        if under:
            prefix = PurePosixPath(PurePosixPath(item.rstrip("/")).name) if several else PurePosixPath()
            return [(u, prefix / rel) for u, rel in under], []
        if storage.exists(item, options) and not item.endswith("/"):
            return [(item, PurePosixPath(PurePosixPath(item).name))], []
        if storage.is_dir(item, options):
            return [], [(item, f"no images found under {item} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")]
        return [], [(item, "no such object or prefix")]
    except CycleBatchError as e:
        return [], [(item, str(e))]
    except OSError as e:  # no such bucket, access denied, endpoint down: this input's problem
        return [], [(item, f"cannot list it ({type(e).__name__}: {e})")]


def expand(inputs: Sequence[str], exclude: Optional[Path] = None, options: Optional[dict] = None,
           ignored: Optional[Counter] = None) -> tuple[list[tuple[Location, Path]], list[tuple[str, str]]]:
    """[(source, path relative to the output root)], [(input, problem)]. Several inputs keep apart by name.
    `ignored` counts, by suffix, the pictures in local folders that run does not read (GIF, HEIC, RAW...)."""
    pairs: list[tuple[Location, Path]] = []
    problems: list[tuple[str, str]] = []
    several = len(inputs) > 1
    for item in inputs:
        loc = storage.as_location(item)
        if isinstance(loc, str):
            found, bad = _expand_url(loc, several, options)
            pairs += [(u, Path(rel)) for u, rel in found]
            problems += bad
            continue
        p = loc.expanduser()
        if p.is_dir():
            files = _walk(p, exclude, ignored)
            if not files:
                problems.append((item, f"no images found in folder {p} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"))
            prefix = Path(p.resolve().name) if several else Path()
            pairs += [(f, prefix / f.relative_to(p)) for f in files]
        elif p.is_file():
            pairs.append((p, Path(p.name)))
        elif p.exists():  # a FIFO, socket or device named directly: say what it is, never open it
            problems.append((item, not_regular(p.stat().st_mode)))
        elif glob.has_magic(item):
            base = _glob_base(item)
            files = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file() and _is_image(Path(f)))
            if not files:
                problems.append((item, "the pattern matches no images"))
            pairs += [(f, f.relative_to(base)) for f in files]
        else:
            problems.append((item, "no such file or folder"))
    return pairs, problems


def _key(loc: Location) -> Location:
    return loc.resolve() if isinstance(loc, Path) else loc


def plan(inputs: Sequence[str], output: "Path | str", *, ext: Optional[str] = None, overwrite: bool = False,
         shard: tuple[int, int] = (0, 1), options: Optional[dict] = None) -> Plan:
    """Decide every output path up front: mirrored tree, suffix, collisions, skips and this shard's share."""
    out = storage.as_location(output) if isinstance(output, str) else output
    remote_out = isinstance(out, str)
    out_root = out if remote_out else out.expanduser().resolve()
    ignored: Counter = Counter()
    pairs, problems = expand(inputs, exclude=None if remote_out else out_root, options=options, ignored=ignored)
    seen: dict[Location, Location] = {}
    jobs: list[Job] = []
    for src, rel in pairs:
        if _key(src) in seen.values():
            continue  # named twice (a file inside a folder also given): translate once
        suffix = ext if ext else PurePosixPath(str(src)).suffix  # keep the name exactly, case included
        if suffix.lower() not in IMAGE_SUFFIXES:  # a file named directly (GIF...): say so now, not after translating
            problems.append((str(src), unwritable_reason(suffix)))
            continue
        dst = (storage.join(out_root, rel.with_suffix(suffix).as_posix()) if remote_out
               else out_root / rel.with_suffix(suffix))
        if _key(dst) == _key(src):
            problems.append((str(src), "the output would replace the input itself; choose another -o"))
            continue
        if dst in seen:
            problems.append((str(src), f"its output {dst} is also the output of {seen[dst]}; rename one of them"))
            continue
        seen[dst] = _key(src)
        jobs.append(Job(src, dst))
    k, n = shard
    mine = jobs[k::n]  # round robin: neighbouring (similar) files spread evenly over the shards
    exists = _exists_check(out_root, options) if not overwrite else (lambda dst: False)
    done = [exists(j.dst) for j in mine]
    todo = [j for j, d in zip(mine, done) if not d]
    skipped = [j for j, d in zip(mine, done) if d]
    return Plan(todo, skipped, problems if k == 0 else [], dict(ignored) if k == 0 else {})


def _exists_check(out_root: Location, options: Optional[dict]):
    """Is this output there already? On object storage: one listing of the output prefix, not one
    request per image."""
    if isinstance(out_root, Path):
        return lambda dst: dst.exists()
    fs, _ = storage.filesystem(out_root, options)
    try:
        there = {fs._strip_protocol(u) for u in storage.list_files(out_root, options)}
    except OSError:
        there = set()  # the bucket may not exist yet: nothing to skip, the writes will say what is wrong
    return lambda dst: fs._strip_protocol(dst) in there


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """'K/N' with 0 <= K < N."""
    if not text:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise CycleBatchError(f"--shard takes K/N (e.g. 0/4), not '{text}'") from None
    if not (n >= 1 and 0 <= k < n):
        raise CycleBatchError(f"--shard {text}: K must be between 0 and {n - 1}")
    return k, n


def check_output_location(inputs: Sequence[str], output: Path, explicit: bool) -> None:
    """Refuse an output folder that is a file (or lies under one), and writing into an input folder unless
    the user named the output explicitly."""
    for p in (output, *output.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                where = "is a file" if p == output else f"lies under {p}, which is a file"
                raise CycleBatchError(f"output folder {output} {where}; name a folder with -o")
            break
    if explicit:
        return
    out = output.expanduser().resolve()
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir() and (out == p.resolve() or p.resolve() in out.parents):
            raise CycleBatchError(f"the default output folder {out} lies inside the input {p}; "
                                  "name an output with -o (cyclebatch never writes into your inputs unasked)")
