"""`run --ray`: the file list as a Ray dataset, a pool of actors each holding one Translator.

The driver plans (same `discover.plan`: mirrored tree, skips, collisions), streams the jobs through
`map_batches` and only counts; each actor decodes, translates and writes its own images with the local
pipeline's loop (`pipeline._Loop`): the same atomic writer, error rules and one-by-one fallback. The
writer is the task that produced the pixels, so the pixels never travel back to the driver (on a
cluster the driver would otherwise carry every output).

Faults: Ray Data starts its actors with max_restarts=-1 and max_task_retries=-1, so a killed actor is
restarted and its in-flight batch re-run on it. Every write is atomic (a rename, or one object PUT), so
an image whose write was cut short is simply absent and is written by the retry; an image the dead actor
had already finished is seen by the restarted actor (its output exists and was not there when the run was
planned) and not written again. With --overwrite that test cannot tell old from new, so such an image is
rewritten, atomically and with the same bytes.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import storage
from .discover import Job
from .errors import CycleBatchError
from .fileio import sweep_dead_temps
from .images import probe
from .pipeline import OutputUnwritable, Reporter, RunOptions, Summary, _Loop, finish_report, prepare

# Test hook: "N:MARKER" makes the first actor in its N-th batch kill its own process once half that batch
# is written, the other writes still in flight, after noting the files it wrote in MARKER; once per
# MARKER (the fault test needs a real process death mid-batch).
KILL_HOOK = "CYCLEBATCH_TEST_KILL_ACTOR_AFTER"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CycleBatchError("--ray needs Ray Data: pip install cyclebatch[ray]") from None
    return ray


def runtime_env() -> dict:
    """Workers must import this cyclebatch, also when it runs from a source tree rather than an install."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> str:
    """Join `address` (or RAY_ADDRESS), else a running local cluster, else start one; say which."""
    ray = _ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines would cut the CLI's output
    if ray.is_initialized():
        return "already connected"
    kw = dict(runtime_env=runtime_env(), logging_level=logging.WARNING, log_to_driver=True,
              include_dashboard=False)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kw)
        return f"joined {address}"
    try:
        ray.init(address="auto", **kw)
        return "joined the running local cluster"
    except (ConnectionError, RuntimeError):
        pass
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kw)
    return f"started a local cluster ({num_cpus or os.cpu_count()} CPUs)"


class _Counting(_Loop):
    """The local loop, noting which jobs it finished (and their megapixels) for the driver's summary."""

    def __init__(self, *a, die_after: int = 0, marker: str = "", **kw):
        super().__init__(*a, **kw)
        self.done: dict[str, float] = {}
        self.written: list = []
        self.die_after, self.marker = die_after, marker

    def collect_write(self) -> None:
        job, _, mp = self.writes[0]
        before = self.summary.translated
        super().collect_write()
        if self.summary.translated > before:
            self.done[str(job.src)] = mp
            self.written.append(job.dst)
            if self.die_after and len(self.done) >= self.die_after:
                _die(self.marker, self.written)  # test hook: mid-batch, other writes still in flight


class Worker:
    """One Ray actor: one Translator, kept loaded for every batch it is given."""

    def __init__(self, model, translator_kwargs: dict, opts: RunOptions, threads: int, hook: str = ""):
        import warnings

        import torch

        import ray

        from .engine import Translator

        if isinstance(model, ray.ObjectRef):  # shared once through the object store, not once per actor
            model = ray.get(model)
        # As many threads as a local run on a node of this size: the kernels' reductions split by thread
        # count, so this is what makes the outputs bitwise equal to a local run's.
        torch.set_num_threads(max(1, threads))
        self.t = Translator(model, **translator_kwargs)
        self.opts, self.hook, self.batches = opts, hook, 0
        # Only a restarted actor can meet outputs of its own earlier life: only it pays for the checks.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.reborn = ray.get_runtime_context().was_current_actor_reconstructed

    def __call__(self, batch: dict) -> dict:
        jobs = [Job(storage.as_location(s), storage.as_location(d)) for s, d in zip(batch["src"], batch["dst"])]
        summary = Summary()
        already = {str(j.src): self._done_before(j) for j in jobs}
        already = {k: v for k, v in already.items() if v is not None}
        todo = [j for j in jobs if str(j.src) not in already]
        self.batches += 1
        marker = self._due_to_die()
        loop = _Counting(self.t, self.opts, Reporter(), summary, die_after=max(1, len(todo) // 2) if marker else 0,
                         marker=marker)
        stopped = ""
        try:
            loop.run(todo)
        except OutputUnwritable as e:
            stopped = str(e)
        reasons = dict(summary.failures)
        src = [str(j.src) for j in jobs]
        return {
            "src": np.array(src, dtype=object),
            "ok": np.array([s in loop.done or s in already for s in src]),
            "mp": np.array([loop.done.get(s, already.get(s, 0.0)) for s in src], dtype=np.float64),
            "reason": np.array([reasons.get(s, "") for s in src], dtype=object),
            "stopped": np.array([stopped] * len(src), dtype=object),
        }

    def _done_before(self, job: Job) -> Optional[float]:
        """The megapixels of an output that an earlier life of this task wrote; None when there is none."""
        if self.opts.overwrite or not (self.reborn or isinstance(job.dst, Path)):
            return None
        if isinstance(job.dst, Path):
            if not job.dst.exists():  # a stat: cheap enough to do always
                return None
            try:
                w, h = probe(job.dst)  # the header only
            except CycleBatchError:
                return None  # unreadable: translate it again
            return w * h / 1e6
        return 0.0 if storage.exists(job.dst, self.opts.storage_options) else None

    def _due_to_die(self) -> str:
        """The test hook's marker when this batch is the one to die in (first actor there, once), else ''."""
        if not self.hook:
            return ""
        n, marker = self.hook.split(":", 1)
        if self.batches != int(n) or os.path.exists(marker):
            return ""
        return marker


def _die(marker: str, written: list) -> None:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another actor got there first: only one dies
    lines = [f"{p}\t{os.stat(p).st_ino}" for p in written if isinstance(p, Path)]
    os.write(fd, "\n".join(lines).encode())
    os.close(fd)
    os._exit(1)


def translate_paths_ray(inputs: Sequence[str], output: "str | Path", model, translator_kwargs: dict,
                        opts: Optional[RunOptions] = None, reporter: Optional[Reporter] = None, *,
                        address: Optional[str] = None, gpus: float = 0.0, cpus: Optional[int] = None,
                        actors: Optional[int] = None, rows_per_task: int = 32) -> tuple[Summary, dict]:
    """Like `pipeline.translate_paths`, on a Ray cluster. Returns the summary and facts about the run
    (cluster, actors, startup seconds)."""
    ray = _ray()
    opts = opts or RunOptions()
    reporter = reporter or Reporter()
    begun = time.perf_counter()
    how = connect(address)
    output, work, opts, summary = prepare(inputs, output, replace(opts, shard=(0, 1)), reporter)
    cpus, actors = _pool_size(ray, gpus, cpus, actors)
    actors = max(1, min(actors, len(work.jobs) or 1))
    facts = {"cluster": how, "actors": actors, "gpus_per_actor": gpus, "cpus_per_actor": cpus,
             "startup_seconds": round(time.perf_counter() - begun, 3)}
    reporter.start(len(work.jobs), len(work.skipped))
    started = time.perf_counter()
    try:
        if work.jobs:
            _stream(ray, work.jobs, model, translator_kwargs, opts, reporter, summary, gpus, cpus, actors,
                    rows_per_task)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        summary.seconds = time.perf_counter() - started
        reporter.stop()
    if isinstance(output, Path):
        sweep_dead_temps(output)  # what a killed actor was writing when it died (its retry wrote the file)
    if summary.stopped:
        summary.not_done = len(work.jobs) - summary.translated - (summary.failed - len(work.problems))
    if opts.report:
        device = translator_kwargs.get("device", "auto") if not gpus else "cuda"
        finish_report(work, summary, opts, {"device": device, "precision": translator_kwargs.get("precision", "auto"),
                                            "backend": "ray"},
                      {"Ray startup": f"{facts['startup_seconds']:.2f} s", "actors": facts["actors"],
                       "cluster": facts["cluster"]}, reporter)
    return summary, facts


def _pool_size(ray, gpus: float, cpus: Optional[int], actors: Optional[int]) -> tuple[int, int]:
    """(CPUs per actor, actors). GPU actors: one CPU each, as many as the GPUs hold. CPU actors: by
    default one per node with all its cores (the smallest node's count), which is what a local run uses."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if gpus:
        cpus = cpus or 1
        total = sum(n.get("GPU", 0) for n in nodes)
        return cpus, actors or max(1, int(total // gpus))
    cpus = cpus or int(min((n.get("CPU", 1) for n in nodes if n.get("CPU")), default=1))
    return cpus, actors or max(1, int(sum(n.get("CPU", 0) for n in nodes) // cpus))


def _stream(ray, jobs: list[Job], model, translator_kwargs, opts, reporter, summary, gpus, cpus, actors,
            rows) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI has its own bar
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = False  # the fastest actor takes the next batch
    kwargs = dict(translator_kwargs)
    if gpus and kwargs.get("device", "auto") in ("auto", "cpu"):
        kwargs["device"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES: the actor's GPU is its cuda:0
    ds = ray.data.from_items([{"src": str(j.src), "dst": str(j.dst)} for j in jobs],
                             override_num_blocks=max(1, min(len(jobs) // rows, 4 * actors)))
    model_ref = ray.put(model)  # held here for the whole run: a restarted actor reads it again
    ds = ds.map_batches(Worker, batch_size=rows, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus or None,
                        fn_constructor_kwargs={"model": model_ref, "translator_kwargs": kwargs, "opts": opts,
                                               "threads": cpus, "hook": os.environ.get(KILL_HOOK, "")})
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for src, ok, mp, reason, stopped in zip(out["src"], out["ok"], out["mp"], out["reason"], out["stopped"]):
            if ok:
                summary.translated += 1
                summary.megapixels += float(mp)
                reporter.advance()
            elif reason:
                summary.failed += 1
                summary.failures.append((str(src), str(reason)))
                reporter.failure(str(src), str(reason))
                reporter.advance()
            if stopped and not summary.stopped:
                summary.stopped = str(stopped)
        if summary.stopped:
            break  # the output takes no more files: stop feeding the actors
