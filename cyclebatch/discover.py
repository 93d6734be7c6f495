"""Inputs -> (source, destination) jobs: files, folders (recursive) and globs, mirrored under the output."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import CycleBatchError
from .fileio import is_temp
from .images import IMAGE_SUFFIXES, not_regular


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path


@dataclass
class Plan:
    jobs: list[Job]  # to translate
    skipped: list[Job]  # output exists already (a re-run resumes)
    problems: list[tuple[str, str]]  # (input, reason): inputs that name nothing usable


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not is_temp(p)


def _walk(folder: Path, exclude: Optional[Path]) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        rootp = Path(root)
        # Never descend into the output (it may sit inside the input) or hidden folders.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or (rootp / d).resolve() != exclude))
        found += [rootp / f for f in sorted(files) if _is_image(rootp / f)]
    return found


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base = [p for p in parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]]
    return Path(*base) if base else Path(".")


def expand(inputs: Sequence[str], exclude: Optional[Path] = None) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """[(source, path relative to the output root)], [(input, problem)]. Several inputs keep apart by name."""
    pairs: list[tuple[Path, Path]] = []
    problems: list[tuple[str, str]] = []
    several = len(inputs) > 1
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files = _walk(p, exclude)
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


def plan(inputs: Sequence[str], output: Path, *, ext: Optional[str] = None, overwrite: bool = False,
         shard: tuple[int, int] = (0, 1)) -> Plan:
    """Decide every output path up front: mirrored tree, suffix, collisions, skips and this shard's share."""
    out_root = output.expanduser().resolve()
    pairs, problems = expand(inputs, exclude=out_root)
    seen: dict[Path, Path] = {}
    jobs: list[Job] = []
    for src, rel in pairs:
        if src.resolve() in seen.values():
            continue  # named twice (a file inside a folder also given): translate once
        suffix = ext if ext else src.suffix  # keep the name exactly, case included
        dst = out_root / rel.with_suffix(suffix)
        if dst.resolve() == src.resolve():
            problems.append((str(src), "the output would replace the input itself; choose another -o"))
            continue
        if dst in seen:
            problems.append((str(src), f"its output {dst} is also the output of {seen[dst]}; rename one of them"))
            continue
        seen[dst] = src.resolve()
        jobs.append(Job(src, dst))
    k, n = shard
    mine = jobs[k::n]  # round robin: neighbouring (similar) files spread evenly over the shards
    todo = [j for j in mine if overwrite or not j.dst.exists()]
    skipped = [j for j in mine if not overwrite and j.dst.exists()]
    return Plan(todo, skipped, problems if k == 0 else [])


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
    """Refuse to write into an input folder unless the user named the output explicitly."""
    if explicit:
        return
    out = output.expanduser().resolve()
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir() and (out == p.resolve() or p.resolve() in out.parents):
            raise CycleBatchError(f"the default output folder {out} lies inside the input {p}; "
                                  "name an output with -o (cyclebatch never writes into your inputs unasked)")
