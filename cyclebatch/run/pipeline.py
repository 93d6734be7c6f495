"""Folder translation: discover -> decode (thread pool, bounded read-ahead) -> batch by size -> model
-> encode and write (thread pool, atomic) -> summary. Data flows one way; the model never waits on disk.
"""

from __future__ import annotations

import collections
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..io import storage
from ..io.discover import Job, plan
from ..engine.teams import fits, team_pool, teams
from ..engine.translator import Pending, Translator
from ..errors import CycleBatchError, first_line, raise_if_interrupted
from ..io.files import location_problem, sweep_dead_temps
from ..io.images import DEFAULT_MAX_PIXELS, Picture, read_image, resize_to, working_size, write_image


REMOTE_WORKERS = 16  # decode/encode threads when reading or writing object storage


@dataclass
class RunOptions:
    ext: Optional[str] = None  # output suffix, e.g. ".png"; default: the input's
    quality: int = 95  # JPEG / WebP
    overwrite: bool = False
    side_by_side: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_size: Optional[int] = None  # longest side of the working resolution
    scale: Optional[float] = None  # working resolution as a factor
    shard: tuple[int, int] = (0, 1)
    workers: int = 0  # decode/encode threads; 0 = automatic
    storage_options: dict = field(default_factory=dict)  # for object-storage URLs (fsspec options)
    report: bool = False  # thumbnails while writing, then OUT/report.html (see report.py)
    report_settings: dict = field(default_factory=dict)  # the model and settings the report lists
    out_root: "Path | str | None" = None  # set by the run: where the report's thumbnails go


@dataclass
class Summary:
    translated: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    interrupted: bool = False
    failures: list = field(default_factory=list)  # [(path, reason)]
    stopped: Optional[str] = None  # why the run stopped early (the output cannot be written: disk full...)
    not_done: int = 0  # images left untranslated by such a stop
    backends: dict = field(default_factory=dict)  # images per engine backend that ran them (engine.EngineStats)
    ignored: dict = field(default_factory=dict)  # {".gif": 3}: pictures in input folders run does not read

    @property
    def images_per_second(self) -> float:
        return self.translated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["images_per_second"] = round(self.images_per_second, 3)
        d["megapixels"] = round(self.megapixels, 3)
        d["seconds"] = round(self.seconds, 3)
        d["failures"] = [{"path": p, "reason": r} for p, r in self.failures]
        return d

    @classmethod
    def combine(cls, parts: Sequence["Summary"]) -> "Summary":
        """One summary for several ranks or shards: counts add up, the slowest one sets the time."""
        out = cls()
        for s in parts:
            out.translated += s.translated
            out.skipped += s.skipped
            out.failed += s.failed
            out.megapixels += s.megapixels
            out.seconds = max(out.seconds, s.seconds)
            out.interrupted |= s.interrupted
            out.failures += s.failures
            out.stopped = out.stopped or s.stopped
            out.not_done += s.not_done
            for k, v in s.backends.items():
                out.backends[k] = out.backends.get(k, 0) + v
            for k, v in s.ignored.items():
                out.ignored[k] = out.ignored.get(k, 0) + v
        return out


class Reporter:
    """What the pipeline tells the outside world; the CLI subclasses it with a progress bar."""

    def status(self, text: str) -> None:
        """What the run is doing while no image moves yet (a Ray run: its cluster, its actors starting)."""

    def start(self, total: int, skipped: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def failure(self, path: str, reason: str) -> None: ...

    def stop(self) -> None: ...


def decode(job: Job, opts: RunOptions) -> Picture:
    if isinstance(job.src, str):
        pic = storage.read_picture(job.src, opts.max_pixels, opts.storage_options)
    else:
        pic = read_image(job.src, opts.max_pixels)
    w, h = pic.size
    tw, th = working_size(w, h, opts.max_size, opts.scale)
    if (tw, th) != (w, h):
        pic.rgb = resize_to(pic.rgb, (tw, th))
        if pic.alpha is not None:
            pic.alpha = resize_to(pic.alpha, (tw, th))
    return pic


def encode(job: Job, pic: Picture, out_rgb: np.ndarray, opts: RunOptions) -> None:
    rgb, alpha = out_rgb, pic.alpha  # translate the colour, put the alpha back
    if opts.side_by_side:
        rgb = np.hstack([pic.rgb, out_rgb])
        alpha = None if alpha is None else np.hstack([alpha, alpha])
    if isinstance(job.dst, str):
        storage.write_picture(job.dst, Picture(rgb, alpha, pic.info), opts.quality, opts.storage_options)
    else:
        write_image(job.dst, Picture(rgb, alpha, pic.info), opts.quality)
    if opts.report:
        _thumbnails(job, pic, out_rgb, opts)


def _thumbnails(job: Job, pic: Picture, out_rgb: np.ndarray, opts: RunOptions) -> None:
    from .report import write_thumbnails

    try:
        write_thumbnails(opts.out_root, job.src, pic.rgb, out_rgb, opts.storage_options)
    except Exception:
        pass  # a missing thumbnail shows as an empty cell; it must never cost the image itself


def finish_report(work, summary: "Summary", opts: RunOptions, settings: dict, timings: dict,
                  reporter: "Reporter") -> None:
    """Write OUT/report.html for a run (local or Ray); a failure to do so is said, never fatal."""
    from .report import PAGE, write_run_report

    try:
        write_run_report(opts.out_root, work, summary, {**opts.report_settings, **settings}, timings,
                         opts.storage_options)
    except Exception as e:
        reporter.failure(f"{opts.out_root}/{PAGE}", f"the report was not written ({type(e).__name__}: {e})")


def io_workers(opts: RunOptions, jobs: Sequence[Job]) -> RunOptions:
    """Object storage is latency-bound: by default keep more requests in flight than for local files."""
    if opts.workers == 0 and any(isinstance(j.src, str) or isinstance(j.dst, str) for j in jobs[:1]):
        return replace(opts, workers=REMOTE_WORKERS)
    return opts


def translate_paths(inputs: Sequence[str], output: str | Path, translator: Translator,
                    opts: Optional[RunOptions] = None, reporter: Optional[Reporter] = None) -> Summary:
    """Translate every image under `inputs` into `output`, mirroring the tree. Never raises for a bad file."""
    opts = opts or RunOptions()
    reporter = reporter or Reporter()
    output, work, opts, summary = prepare(inputs, output, opts, reporter)
    reporter.start(len(work.jobs), len(work.skipped))
    started = time.perf_counter()
    ran_before = collections.Counter(getattr(translator.stats, "backends", {}))
    try:
        _Loop(translator, opts, reporter, summary).run(work.jobs)
    except OutputUnwritable as e:
        summary.stopped = str(e)
        summary.not_done = len(work.jobs) - summary.translated - (summary.failed - len(work.problems))
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        summary.seconds = time.perf_counter() - started
        summary.backends = dict(collections.Counter(getattr(translator.stats, "backends", {})) - ran_before)
        reporter.stop()
    if opts.report:
        finish_report(work, summary, opts, {"device": str(translator.device), "precision": translator.precision,
                                            "backend": "local"}, {}, reporter)
    return summary


def prepare(inputs: Sequence[str], output: "str | Path", opts: RunOptions, reporter: Reporter):
    """The plan of a run (local or Ray): (output, work, opts, summary), problems already counted and the
    dead temporary files of earlier runs swept from a local output."""
    output = storage.as_location(output) if isinstance(output, str) else output
    opts = replace(opts, out_root=output if isinstance(output, str) else output.expanduser().resolve())
    work = plan(inputs, output, ext=opts.ext, overwrite=opts.overwrite, shard=opts.shard,
                options=opts.storage_options)
    opts = io_workers(opts, work.jobs)
    summary = Summary(skipped=len(work.skipped), ignored=work.ignored)
    for item, reason in work.problems:
        summary.failed += 1
        summary.failures.append((item, reason))
        reporter.failure(item, reason)
    if isinstance(output, Path):
        sweep_dead_temps(output)
    return output, work, opts, summary


class _Loop:
    """The producer/consumer core. Decodes run ahead by a bounded amount; writes drain behind; one batch
    is on the device while the next is prepared (on a GPU the two overlap). On a CPU two batches run at once,
    each on half the torch threads (engine/teams.py); tiled images run one at a time on all of them."""

    def __init__(self, translator: Translator, opts: RunOptions, reporter: Reporter, summary: Summary):
        self.t, self.opts, self.reporter, self.summary = translator, opts, reporter, summary
        self.workers = opts.workers or max(2, min(8, (os.cpu_count() or 2)))
        self.decoders = ThreadPoolExecutor(self.workers, thread_name_prefix="cb-decode")
        self.writers = ThreadPoolExecutor(self.workers, thread_name_prefix="cb-write")
        self.readahead = 2 * self.workers + 8  # grows with the batch size (see `batch_for`)
        self.writes: collections.deque[tuple[Job, Future, float]] = collections.deque()
        self.groups: dict[tuple, list[tuple[Job, Picture]]] = collections.OrderedDict()
        # batches in the model, oldest first: (key, batch, Pending or Future of the outputs)
        self.inflight: collections.deque[tuple[tuple, list, "Pending | Future"]] = collections.deque()
        self.teams = teams(translator)
        self.model_pool = team_pool(self.teams) if self.teams > 1 else None

    def fail(self, job: Job, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failures.append((str(job.src), reason))
        self.reporter.failure(str(job.src), reason)
        self.reporter.advance()

    def batch_for(self, h: int, w: int) -> int:
        """The size's batch; the read-ahead keeps room for two of them, or a batch could never fill."""
        n = self.t.auto_batch_size(h, w)
        self.readahead = max(self.readahead, 2 * n + self.workers)
        return n

    def run(self, jobs: list[Job]) -> None:
        todo = collections.deque(jobs)
        decoding: collections.deque[tuple[Job, Future]] = collections.deque()
        try:
            while todo or decoding:
                while todo and len(decoding) + self.buffered() < self.readahead:
                    job = todo.popleft()
                    decoding.append((job, self.decoders.submit(decode, job, self.opts)))
                job, fut = decoding.popleft()
                try:
                    pic = fut.result()
                except CycleBatchError as e:
                    self.fail(job, _reason(e, job))
                    continue
                except Exception as e:  # a decoder bug must cost one file, not the run
                    self.fail(job, f"cannot decode ({type(e).__name__}: {e})")
                    continue
                key = (pic.rgb.shape, pic.rgb.dtype.str)
                group = self.groups.setdefault(key, [])
                group.append((job, pic))
                h, w = pic.rgb.shape[:2]
                if len(group) >= self.batch_for(h, w):
                    self.flush(key)
                elif self.buffered() >= self.readahead // 2:
                    self.flush(max(self.groups, key=lambda k: len(self.groups[k])))
            for key in list(self.groups):
                self.flush(key)
            while self.inflight:
                self.collect_batch()
            while self.writes:
                self.collect_write()
        finally:
            for _, fut in decoding:
                fut.cancel()
            self.decoders.shutdown(wait=True, cancel_futures=True)
            if self.model_pool is not None:
                self.model_pool.shutdown(wait=True, cancel_futures=True)
            self.writers.shutdown(wait=True)  # in-flight writes finish or vanish: they are atomic
            while self.writes:
                try:
                    self.collect_write()
                except OutputUnwritable:
                    pass  # the first one already stopped the run

    def buffered(self) -> int:
        return sum(len(g) for g in self.groups.values())

    def flush(self, key: tuple) -> None:
        """Send a group to the model, then hand the oldest finished batch's results to the writers."""
        raise_if_interrupted()
        batch = self.groups.pop(key)
        images = [pic.rgb for _, pic in batch]
        h, w = images[0].shape[:2]
        if self.model_pool is not None and fits(self.t, h, w, self.teams):
            self.inflight.append((key, batch, self.model_pool.submit(self.t.translate_batch, images)))
            while len(self.inflight) > self.teams:  # both teams busy and one batch queued behind them
                self.collect_batch()
            return
        while self.model_pool is not None and self.inflight:  # a tiled or large image takes every thread
            self.collect_batch()
        try:
            pending = self.t.submit(images)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            self.collect_batch()
            self.one_by_one(key, batch, e)
            return
        self.collect_batch()
        self.inflight.append((key, batch, pending))

    def collect_batch(self) -> None:
        if not self.inflight:
            return
        key, batch, pending = self.inflight.popleft()
        try:
            outs = pending.result()
        except KeyboardInterrupt:
            raise
        except Exception as e:
            self.one_by_one(key, batch, e)
            return
        self.write(batch, outs)

    def one_by_one(self, key: tuple, batch: list, exc: Exception) -> None:
        """A failed batch (the engine already retried out-of-memory ones smaller) is tried image by image,
        so that one bad image costs one file."""
        if isinstance(exc, CycleBatchError):  # the engine's own refusal (too small): the same for every image
            hint = " (the working size that --max-size/--scale gave)" if self.opts.max_size or self.opts.scale else ""
            for job, _ in batch:
                self.fail(job, f"{exc}{hint}")
            return
        if len(batch) == 1:
            self.fail(batch[0][0], f"translation failed ({_short(exc)})")
            return
        for job, pic in batch:
            try:
                out = self.t.translate_batch([pic.rgb])
            except KeyboardInterrupt:
                raise
            except Exception as e:
                self.fail(job, f"translation failed ({_short(e)})")
                continue
            self.write([(job, pic)], out)

    def write(self, batch: list, outs: list[np.ndarray]) -> None:
        for (job, pic), out in zip(batch, outs):
            while len(self.writes) >= self.readahead:
                self.collect_write()
            mp = out.shape[0] * out.shape[1] / 1e6
            self.writes.append((job, self.writers.submit(encode, job, pic, out, self.opts), mp))

    def collect_write(self) -> None:
        job, fut, mp = self.writes.popleft()
        try:
            fut.result()
        except CycleBatchError as e:
            self.fail(job, _reason(e, job))
            return
        except OSError as e:
            problem = (location_problem(e, job.dst) if isinstance(job.dst, Path)
                       else storage.location_problem(e, job.dst))
            if problem:  # the run's problem, not the file's: one message, not one per image
                raise OutputUnwritable(f"{problem}. Stopped; finished images are kept and no partial file "
                                       "was left: make room and run the same command again to resume") from None
            self.fail(job, f"cannot write {job.dst} ({e.strerror or e})")
            return
        except Exception as e:
            self.fail(job, f"cannot write {job.dst} ({type(e).__name__}: {e})")
            return
        self.summary.translated += 1
        self.summary.megapixels += mp
        self.reporter.advance()


class OutputUnwritable(CycleBatchError):
    """The output location takes no more files; the run stops, keeping what it finished."""


def _short(e: BaseException) -> str:
    if isinstance(e, CycleBatchError):
        return str(e)
    return f"{type(e).__name__}: {first_line(e)}"


def _reason(e: CycleBatchError, job: Job) -> str:
    """CycleBatchError messages start with the file name; the reporter adds it back itself."""
    msg = str(e)
    prefix = f"{job.src}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg
