"""The threaded pipeline of `video`: decode -> model -> finish -> encode, each stage its own thread.

- decode (reader thread): FFmpeg decodes and converts (its own threads inside); frames are resized to
  the working size here, so the model's thread only runs the model;
- model (the calling thread): batches through the engine (or the device path, colour on the GPU). On a
  CPU, two batches run at once, each on half the torch threads (engine/teams.py), where nothing orders
  the frames' passes (no shared statistics) and frames are not tiled;
- finish (its own thread, only when there is per-frame work after the model): the temporal stabiliser,
  the comparison panels and the upscale back to the input's size (video/finish.py). The input frames
  travel with their translations to it, so it never waits on the model and the model never on it;
- encode (writer thread): one sink per output.

Every queue is bounded (16 decoded frames, 2 batches between the later stages), so memory does not grow
with the video's length; an error in any stage stops the others and is raised from the calling thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from typing import Callable, Optional

from .device import DevicePath
from ..engine.teams import fits, team_pool, teams as model_teams
from .sinks import VideoSink
from .sources import Frame, VideoSource
from ..errors import CycleBatchError, raise_if_interrupted
from ..io.files import note_free_space


class _Stop(Exception):
    pass


def _put(q: "queue.Queue", item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            pass
    raise _Stop()


def _get(q: "queue.Queue", stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            pass
    raise _Stop()


_END = object()


def _is_compiled(translator) -> bool:
    return bool(getattr(translator, "compiled", False))  # a stand-in translator has no such attribute


def run_pipeline(source, sinks: list, translator, *, shared_stats: bool = False,
                 prepare: Optional[Callable[[Frame], Frame]] = None,
                 finish: Optional[Callable[[list[Frame]], list[list[Frame]]]] = None,
                 keep_input: bool = False, progress=None, colour_on_device: bool = False) -> tuple[int, int]:
    """Run every frame of `source` through `translator` into `sinks`; returns (frames, cuts found by the
    shared statistics).

    prepare: per decoded frame, in the reader thread (the resize to the working size).
    finish: per batch of translated frames, in its own thread; returns one list of frames per sink.
    Without it the translations go to `sinks[0]`. keep_input: each translated frame carries its input
    (`Frame.source`) to `finish`.
    """
    from .shared_stats import StableStats

    stop = threading.Event()
    frames_q: "queue.Queue" = queue.Queue(maxsize=16)
    out_q: "queue.Queue" = queue.Queue(maxsize=2)
    done_q: "queue.Queue" = queue.Queue(maxsize=2) if finish is not None else out_q
    errors: list[BaseException] = []
    yuv = colour_on_device and isinstance(source, VideoSource) and prepare is None and not keep_input

    def guarded(fn):
        def body() -> None:
            try:
                fn()
            except _Stop:
                pass
            except BaseException as e:
                errors.append(e)
                stop.set()
        return body

    def read() -> None:
        for f in (source.frames(yuv=True) if yuv else source.frames()):
            _put(frames_q, prepare(f) if prepare is not None else f, stop)
        _put(frames_q, _END, stop)

    def finishing() -> None:
        while True:
            batch = _get(out_q, stop)
            if batch is _END:
                _put(done_q, _END, stop)
                return
            _put(done_q, finish(batch), stop)

    def write() -> None:
        sink = sinks[0]
        try:
            while True:
                parts = _get(done_q, stop)
                if parts is _END:
                    for sink in sinks:
                        sink.close()
                    return
                for sink, frames in zip(sinks, parts if finish is not None else [parts]):
                    if frames:
                        sink.write(frames)
        except Exception as e:
            _mark_failed_write(e, sink)
            raise

    sharing = shared_stats and hasattr(getattr(translator, "model", None), "norms")  # not for a stand-in model
    stable = StableStats(translator) if sharing else None
    # A compiled model is specialised to one batch shape: the last, shorter batch is padded with copies of
    # its last frame (dropped again) rather than compiled anew. The shared statistics run forwards in
    # time, so the copies after the real frames change none of them.
    pad = _is_compiled(translator)
    threads = [threading.Thread(target=guarded(read), name="cyclebatch-decode", daemon=True),
               threading.Thread(target=guarded(write), name="cyclebatch-encode", daemon=True)]
    if finish is not None:
        threads.append(threading.Thread(target=guarded(finishing), name="cyclebatch-finish", daemon=True))
    for t in threads:
        t.start()
    done = 0
    if progress:
        progress(0, source.total)  # the length is known from the container before the first batch
    pool, teams = None, 1
    in_flight: "deque" = deque()  # with teams: (frame count, future of the translated frames), in display order

    def framed(results, batch: list) -> list:
        return [Frame(o, f.pts, source=f.rgb if keep_input else None) for o, f in zip(results, batch)]

    def deliver(n: int, outs: list) -> None:
        nonlocal done
        _put(out_q, outs, stop)
        raise_if_interrupted()
        done += n
        if progress:
            progress(done, source.total)

    def hand_on(wait_for: int) -> None:
        """Pass the teams' finished batches on, in order, until at most `wait_for` are in flight."""
        while len(in_flight) > wait_for:
            n, job = in_flight.popleft()
            deliver(n, job.result())

    try:
        with (stable if stable is not None else contextlib.nullcontext()):
            batch_size, ended, device = None, False, None
            while not ended:
                first = _get(frames_q, stop)
                if first is _END:
                    break
                if batch_size is None:
                    if first.yuv is not None:
                        device = DevicePath(translator, source, isinstance(sinks[0], VideoSink))
                    size = device.size(first) if device is not None else first.size
                    batch_size = max(1, translator.auto_batch_size(*size))
                    teams = model_teams(translator, stable is not None) if device is None else 1
                    if teams > 1 and not fits(translator, *size, teams):
                        teams = 1
                    if teams > 1:
                        pool = team_pool(teams)
                batch = [first]
                while len(batch) < batch_size:
                    item = _get(frames_q, stop)
                    if item is _END:
                        ended = True
                        break
                    batch.append(item)
                run = batch + [batch[-1]] * (batch_size - len(batch)) if pad else batch
                if device is not None:
                    deliver(len(batch), device(run, stable)[:len(batch)])
                    continue
                images = [f.rgb for f in run]
                if pool is not None:
                    in_flight.append((len(batch), pool.submit(
                        lambda images=images, batch=batch: framed(translator.translate_batch(images), batch))))
                    hand_on(teams - 1)
                else:
                    results = (translator.translate_batch(images, listener=stable) if stable is not None
                               else translator.translate_batch(images))
                    deliver(len(batch), framed(results, batch))
            hand_on(0)
        _put(out_q, _END, stop)
        for t in threads:
            t.join()
        if errors:
            raise _Stop()
    except _Stop:
        _stop_all(stop, threads, sinks)
        raise errors[0] if errors else CycleBatchError("stopped")
    except BaseException:
        _stop_all(stop, threads, sinks)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return done, (stable.n_cuts if stable is not None else 0)


def _mark_failed_write(e: BaseException, sink) -> None:
    """Tag a write error with the output that failed and, for a full disk or quota, the space free at that
    moment: the caller's report comes after the partial output is removed, which frees space again."""
    with contextlib.suppress(Exception):
        e.cyclebatch_output = getattr(sink, "label", None) or sink.path
    with contextlib.suppress(Exception):
        note_free_space(e, sink.path)


def _stop_all(stop: threading.Event, threads: list, sinks: list) -> None:
    stop.set()
    for t in threads:
        t.join()
    for sink in sinks:
        sink.abort()
