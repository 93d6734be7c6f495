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
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..io import storage
from ..io.discover import Job
from ..errors import CycleBatchError
from ..io.files import sweep_dead_temps
from ..io.images import probe
from .pipeline import OutputUnwritable, Reporter, RunOptions, Summary, _Loop, finish_report, prepare

# A file that the driver and the actors append their start-up moments to ("epoch seconds<TAB>who<TAB>what";
# time.time() is one clock for every process on a machine): `benchmarks/bench_ray.py --timeline`.
TIMELINE = "CYCLEBATCH_RAY_TIMELINE"
_LOADED = time.time()  # this module's import finished (in an actor: torch and the engine imported)


def mark(what: str, who: str = "driver", path: Optional[str] = None, at: Optional[float] = None) -> None:
    """Note a moment (`at`, default now) of the run's start in the timeline file, if there is one."""
    path = os.environ.get(TIMELINE, "") if path is None else path
    if path:
        with open(path, "a") as f:
            f.write(f"{at or time.time():.4f}\t{who}\t{what}\n")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CycleBatchError("--ray needs Ray Data: pip install 'cyclebatch[ray]'") from None
    return ray


def runtime_env() -> dict:
    """Workers must import this cyclebatch, also when it runs from a source tree rather than an install."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the cyclebatch package
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None, say=lambda text: None) -> str:
    """Join `address` (or RAY_ADDRESS), else a running local cluster, else start one ("local": always start
    one); say which. Returns once Ray Data's helper actors run too (see data_services). `say` hears what
    takes a while before it does."""
    ray = _ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines would cut the CLI's output
    # Two notices about what cyclebatch chose, printed on every run: Ray Data's progress bars are off (the
    # CLI has its own) and a cluster started here has token authentication (it lives as long as the run).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    how = "already connected" if ray.is_initialized() else _init(ray, address, num_cpus, say)
    say("Ray: starting Ray Data's helpers")
    data_services(ray)
    return how


def _init(ray, address: Optional[str], num_cpus: Optional[int], say) -> str:
    kw = dict(logging_level=logging.WARNING, log_to_driver=True, include_dashboard=False)
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":  # "local", as in Ray: a new cluster of this run's own
        ray.init(address=address, runtime_env=runtime_env(), **kw)
        return f"joined {address}"
    if not address:
        try:
            ray.init(address="auto", runtime_env=runtime_env(), **kw)
            return "joined the running local cluster"
        except (ConnectionError, RuntimeError):
            pass
    # A cluster started here inherits this process's environment, so its workers get the PYTHONPATH from
    # that and the job needs no runtime_env: a job with one gets workers of its own, and the workers Ray
    # starts with the cluster (idle, Ray imported) could not serve it.
    say("Ray: starting a local cluster")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = runtime_env()["env_vars"]["PYTHONPATH"]
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kw)
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    return f"started a local cluster ({num_cpus or os.cpu_count()} CPUs)"


def data_services(ray) -> None:
    """Start Ray Data's cluster-wide helper actors now, if the cluster lacks them, and wait until they run.

    They (statistics, actor locations, autoscaling coordinator) are detached actors that a cluster's first
    Ray Data job makes: each a new worker process importing Ray Data, 1.5 s of CPU apiece. Made by the run
    itself they start at the same moment as the first translating actor, which imports torch on the same
    cores (on 2 cores its start went from about 3 s to 6-8 s); made beforehand, the actor has the cores to
    itself. On a cluster that has them already this is one lookup each."""
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
        from ray.data._internal.execution.node_trackers import get_or_create_actor_location_tracker
        from ray.data._internal.stats import get_or_create_stats_actor

        makers = (get_or_create_stats_actor, get_or_create_actor_location_tracker, get_or_create_autoscaling_coordinator)
        ray.get([make().__ray_ready__.remote() for make in makers])
    except Exception:  # noqa: BLE001 (Ray Data's private API: another Ray version only loses the head start)
        logging.getLogger(__name__).debug("Ray Data's helper actors not started ahead", exc_info=True)


class CountingLoop(_Loop):
    """The local loop, noting which jobs it finished (and their megapixels) for the driver's summary. One
    is made per task; `translate_paths_ray(loop_class=...)` takes a subclass (the fault test's kills its
    actor mid-task)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.done: dict[str, float] = {}
        self.written: list = []

    def collect_write(self) -> None:
        job, _, mp = self.writes[0]
        before = self.summary.translated
        super().collect_write()
        if self.summary.translated > before:
            self.done[str(job.src)] = mp
            self.written.append(job.dst)


def _thread() -> str:
    return "the main thread" if threading.current_thread() is threading.main_thread() else \
        f"thread {threading.current_thread().name}"


def _rows(src: list, ok: list, mp: list, reason: list, stopped: str = "", error: str = "") -> dict:
    """A task's answer to the driver, a row per image: the batch-wide `stopped` (the output takes no more
    files) and `error` (the actor cannot run at all) repeated on each."""
    n = len(src)
    return {"src": np.array(src, dtype=object), "ok": np.array(ok, dtype=bool), "mp": np.array(mp, dtype=np.float64),
            "reason": np.array(reason, dtype=object), "stopped": np.array([stopped] * n, dtype=object),
            "error": np.array([error] * n, dtype=object)}


def _process_marks(path: str, who: str) -> None:
    """This process's start, the start and the end of its cyclebatch import, now (the constructor)."""
    from .. import IMPORT_STARTED

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # start time, clock ticks after boot
        mark("worker process started", who, path,
             time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        pass  # not Linux
    mark("cyclebatch import begins", who, path, IMPORT_STARTED)
    mark("cyclebatch imported (torch included)", who, path, _LOADED)
    mark("actor constructor called", who, path)


class Worker:
    """One Ray actor: one Translator, kept loaded for every batch it is given."""

    def __init__(self, model, translator_kwargs: dict, opts: RunOptions, threads: int, loop_class=None,
                 timeline: str = ""):
        import warnings

        import ray

        self.timeline, self.who = timeline, f"actor {os.getpid()}"
        if timeline:
            _process_marks(timeline, self.who)
        self.model, self.translator_kwargs, self.threads = model, translator_kwargs, threads
        self.t = None  # built by the first call (_translator)
        self.opts, self.loop_class, self.batches = opts, loop_class or CountingLoop, 0
        # Only a restarted actor can meet outputs of its own earlier life: only it pays for the checks.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.reborn = ray.get_runtime_context().was_current_actor_reconstructed

    def _translator(self):
        """The Translator, built by the thread that runs the calls. Ray Data constructs an actor on its main
        thread and calls it on a helper thread: torch work on both gives libgomp two thread teams, more
        threads than cores, and then its idle threads sleep instead of spinning at every operator's end
        (a 128 px forward 80 against 66 ms, 161% against 199% CPU on 2 cores). Built here, one team."""
        if self.t is None:
            import torch

            import ray

            from ..engine.translator import Translator

            model = ray.get(self.model) if isinstance(self.model, ray.ObjectRef) else self.model
            mark("model received", self.who, self.timeline)
            # As many threads as a local run on a node of this size: the kernels' reductions split by thread
            # count, so this is what makes the outputs bitwise equal to a local run's.
            torch.set_num_threads(max(1, self.threads))
            self.t = Translator(model, **self.translator_kwargs)
            mark(f"translator built (on {_thread()})", self.who, self.timeline)
        return self.t

    def __call__(self, batch: dict) -> dict:
        mark(f"batch {self.batches + 1} begins (on {_thread()})", self.who, self.timeline)
        src = [str(s) for s in batch["src"]]
        try:
            translator = self._translator()
        except CycleBatchError as e:  # a setting this actor cannot run (Ray would carry only its traceback)
            return _rows(src, [False] * len(src), [0.0] * len(src), [""] * len(src), error=str(e))
        jobs = [Job(storage.as_location(s), storage.as_location(d)) for s, d in zip(batch["src"], batch["dst"])]
        summary = Summary()
        already = {str(j.src): self._done_before(j) for j in jobs}
        already = {k: v for k, v in already.items() if v is not None}
        todo = [j for j in jobs if str(j.src) not in already]
        self.batches += 1
        loop = self.loop_class(translator, self.opts, Reporter(), summary)
        stopped = ""
        try:
            loop.run(todo)
        except OutputUnwritable as e:
            stopped = str(e)
        mark(f"batch {self.batches} done ({len(jobs)} images)", self.who, self.timeline)
        reasons = dict(summary.failures)
        return _rows(src, [s in loop.done or s in already for s in src],
                     [loop.done.get(s, already.get(s, 0.0)) for s in src], [reasons.get(s, "") for s in src],
                     stopped=stopped)

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


def translate_paths_ray(inputs: Sequence[str], output: "str | Path", model, translator_kwargs: dict,
                        opts: Optional[RunOptions] = None, reporter: Optional[Reporter] = None, *,
                        address: Optional[str] = None, gpus: float = 0.0, cpus: Optional[int] = None,
                        actors: Optional[int] = None, rows_per_task: int = 32,
                        loop_class: Optional[type] = None) -> tuple[Summary, dict]:
    """Like `pipeline.translate_paths`, on a Ray cluster. Returns the summary and facts about the run
    (cluster, actors, startup seconds). `loop_class`: a CountingLoop subclass the actors run each task
    with (it travels to them pickled; tests use it to fail on purpose)."""
    ray = _ray()
    opts = opts or RunOptions()
    reporter = reporter or Reporter()
    begun = time.perf_counter()
    mark("run called")
    reporter.status("Ray: connecting")
    how = connect(address, say=reporter.status)
    mark("connected (and Ray Data's helper actors up)")
    output, work, opts, summary = prepare(inputs, output, replace(opts, shard=(0, 1)), reporter)
    mark("planned")
    cpus, actors = _pool_size(ray, gpus, cpus, actors)
    actors = max(1, min(actors, len(work.jobs) or 1))
    facts = {"cluster": how, "actors": actors, "gpus_per_actor": gpus, "cpus_per_actor": cpus,
             "startup_seconds": round(time.perf_counter() - begun, 3)}
    reporter.start(len(work.jobs), len(work.skipped))
    reporter.status(f"Ray: starting {actors} actor{'s' if actors > 1 else ''}")
    started = time.perf_counter()
    try:
        if work.jobs:
            _stream(ray, work.jobs, model, translator_kwargs, opts, reporter, summary, gpus, cpus, actors,
                    rows_per_task, loop_class)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        summary.seconds = time.perf_counter() - started
        mark("finished")
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
            rows, loop_class) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI has its own bar
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = False  # the fastest actor takes the next batch
    kwargs = dict(translator_kwargs)
    if gpus and kwargs.get("device", "auto") in ("auto", "cpu"):
        kwargs["device"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES: the actor's GPU is its cuda:0
    # One block per task and one call per block, at most `rows` images each: the actor's pipeline fills
    # and drains once per task, results come back (and a restarted actor redoes) a task at a time. (Blocks
    # of several calls returned their results only at the block's end, and an uneven split left calls of
    # one or two images.)
    ds = ray.data.from_items([{"src": str(j.src), "dst": str(j.dst)} for j in jobs],
                             override_num_blocks=max(1, -(-len(jobs) // rows)))
    model_ref = ray.put(model)  # held here for the whole run: a restarted actor reads it again
    mark("dataset made, model in the object store")
    # Ray Data calls the actors on a helper thread; Worker builds its Translator there (see _translator).
    # Its main-thread switch (enable_true_multi_threading) is not used: with it, outputs once differed from
    # a local run's in one image of 48 (tests/test_ray.py after other tests, on a Xeon; not understood).
    ds = ds.map_batches(Worker, batch_size=None, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        num_cpus=cpus, num_gpus=gpus or None,
                        fn_constructor_kwargs={"model": model_ref, "translator_kwargs": kwargs, "opts": opts,
                                               "threads": cpus, "loop_class": loop_class,
                                               "timeline": os.environ.get(TIMELINE, "")})
    # No prefetching: with it Ray Data hands over a task's results only once the next task's are in, so
    # the counts (and the progress bar) lagged one task behind the actors.
    for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        mark(f"results back ({len(out['src'])} images)")
        if not (summary.translated or summary.failed):
            reporter.status("translating")
        if out["error"][0]:
            raise CycleBatchError(str(out["error"][0]))
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
