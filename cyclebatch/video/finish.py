"""What `video` does to frames around the model: the working size before it; after it, in display order,
the temporal stabiliser (temporal.FlowStabilizer), the comparison panels and the upscale back to the
input's size."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import cv2
import numpy as np

from ..errors import CycleBatchError
from .temporal import FlowStabilizer
from .sources import Frame

TEMPORAL = ("flow", "stats", "off", "flow+stats")


def check_temporal(temporal: str) -> str:
    if temporal not in TEMPORAL:
        raise CycleBatchError(f"--temporal {temporal}: not one of {', '.join(TEMPORAL[:3])}")
    return temporal


def even(n: int) -> int:
    return max(2, n - n % 2)


class Resizer:
    """Frames to the working size (`run`'s --max-size / --scale, images.working_size), in the reader
    thread. Decided on the first frame: the upright size is known only once it is decoded. `even`: a
    resized video keeps even sides (4:2:0 H.264 needs them), so the sink pads nothing."""

    def __init__(self, max_size: Optional[int], scale: Optional[float], even_sides: bool):
        self.max_size, self.scale, self.even_sides = max_size, scale, even_sides
        self.input_size: Optional[tuple[int, int]] = None  # (w, h), upright
        self.work_size: Optional[tuple[int, int]] = None

    def __call__(self, f: Frame) -> Frame:
        from ..io.images import resize_to, working_size

        h, w = f.rgb.shape[:2]
        if self.input_size is None:
            tw, th = working_size(w, h, self.max_size, self.scale)
            if (tw, th) != (w, h) and self.even_sides:
                tw, th = even(tw), even(th)
            self.input_size, self.work_size = (w, h), (tw, th)
        if (w, h) == self.work_size:
            return f
        if (w, h) != self.input_size:  # a frame folder checks this itself; a video cannot change size here
            raise CycleBatchError(f"frame {f.pts}: {w}x{h}, but the first frame is "
                                  f"{self.input_size[0]}x{self.input_size[1]}")
        f.rgb = resize_to(f.rgb, self.work_size)
        return f


class Finisher:
    """Per batch of translated frames (each carrying its input), in display order, in the pipeline's
    finishing thread: stabilise, make the comparison panel (input | model output | final, at the working
    size), upscale. Returns [frames for the output] (+ [panels] with `compare`). State: the stabiliser's
    one previous frame, nothing else."""

    def __init__(self, temporal: str, compare: bool = False, resizer: Optional[Resizer] = None,
                 upscale: bool = False, stabilizer: Optional[FlowStabilizer] = None, flow_workers: Optional[int] = None):
        self.stab = (stabilizer or FlowStabilizer()) if temporal.startswith("flow") else None
        self.compare, self.resizer, self.upscale = compare, resizer, upscale
        self.max_state_bytes = 0  # the stabiliser's largest state: flat in the video's length
        # The flow between two input frames needs no earlier result, so with cores to spare (a GPU runs the
        # model) it is computed for the next frames in a pool while this thread blends: the blend alone
        # is sequential. On 2 cores the model has them; one worker still overlaps flow and blend.
        if flow_workers is None:
            flow_workers = max(1, min(4, (os.cpu_count() or 2) // 4))
        self.flow_workers = flow_workers
        self._pool = ThreadPoolExecutor(flow_workers, "cyclebatch-flow") if self.stab is not None and flow_workers > 0 else None
        self._last_input: Optional[np.ndarray] = None  # the previous batch's last input frame

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _stabilised(self, batch: list[Frame]) -> list[np.ndarray]:
        prevs = [self._last_input] + [f.source for f in batch[:-1]]
        self._last_input = batch[-1].source
        if self._pool is None:
            return [self.stab(f.source, f.rgb) for f in batch]
        todo, jobs, out = iter(zip(prevs, batch)), deque(), []

        def submit() -> None:  # a few frames ahead, not the whole batch: each motion is 12 bytes a pixel
            for p, f in todo:
                same = p is not None and p.shape == f.source.shape
                jobs.append((f, self._pool.submit(self.stab.motion, p, f.source) if same else None))
                return

        for _ in range(2 * self.flow_workers):
            submit()
        while jobs:
            f, job = jobs.popleft()
            submit()
            out.append(self.stab(f.source, f.rgb, motion=job.result() if job is not None else None))
        return out

    @property
    def cuts(self) -> int:
        return self.stab.cuts if self.stab is not None else 0

    def __call__(self, batch: list[Frame]) -> list[list[Frame]]:
        outs, panels = [], []
        final = self._stabilised(batch) if self.stab is not None else [f.rgb for f in batch]
        if self.stab is not None:
            self.max_state_bytes = max(self.max_state_bytes, self.stab.state_bytes)
        for f, rgb in zip(batch, final):
            if self.compare:
                panels.append(Frame(np.hstack([f.source, f.rgb, rgb]), f.pts))
            if self.upscale and self.resizer is not None and self.resizer.input_size != self.resizer.work_size:
                # Lanczos: sharper than bicubic when enlarging; area averaging when a --scale > 1 is undone
                up = self.resizer.input_size[0] > self.resizer.work_size[0]
                rgb = cv2.resize(rgb, self.resizer.input_size,
                                 interpolation=cv2.INTER_LANCZOS4 if up else cv2.INTER_AREA)
            outs.append(Frame(rgb, f.pts))
        return [outs, panels] if self.compare else [outs]
