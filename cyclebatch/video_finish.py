"""What `video` does to frames around the model: the working size before it; after it, in display order,
the temporal stabiliser (temporal.FlowStabilizer), the comparison panels and the upscale back to the
input's size."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from .errors import CycleBatchError
from .temporal import FlowStabilizer
from .video_sources import Frame

TEMPORAL = ("flow", "stats", "off", "flow+stats")


def check_temporal(temporal: str) -> str:
    if temporal not in TEMPORAL:
        raise CycleBatchError(f"--temporal {temporal}: not one of {', '.join(TEMPORAL[:3])}")
    return temporal


def even(n: int) -> int:
    return max(2, n - n % 2)


class Resizer:
    """Frames to the working size (`run`'s --max-size / --scale, pipeline.working_size), in the reader
    thread. Decided on the first frame: the upright size is known only once it is decoded. `even`: a
    resized video keeps even sides (4:2:0 H.264 needs them), so the sink pads nothing."""

    def __init__(self, max_size: Optional[int], scale: Optional[float], even_sides: bool):
        self.max_size, self.scale, self.even_sides = max_size, scale, even_sides
        self.input_size: Optional[tuple[int, int]] = None  # (w, h), upright
        self.work_size: Optional[tuple[int, int]] = None

    def __call__(self, f: Frame) -> Frame:
        from .pipeline import working_size

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
        interp = cv2.INTER_AREA if self.work_size[0] < w else cv2.INTER_CUBIC
        f.rgb = cv2.resize(f.rgb, self.work_size, interpolation=interp)
        return f


class Finisher:
    """Per batch of translated frames (each carrying its input), in display order, in the pipeline's
    finishing thread: stabilise, make the comparison panel (input | model output | final, at the working
    size), upscale. Returns [frames for the output] (+ [panels] with `compare`). State: the stabiliser's
    one previous frame, nothing else."""

    def __init__(self, temporal: str, compare: bool = False, resizer: Optional[Resizer] = None,
                 upscale: bool = False, stabilizer: Optional[FlowStabilizer] = None):
        self.stab = (stabilizer or FlowStabilizer()) if temporal.startswith("flow") else None
        self.compare, self.resizer, self.upscale = compare, resizer, upscale
        self.max_state_bytes = 0  # the stabiliser's largest state: flat in the video's length

    @property
    def cuts(self) -> int:
        return self.stab.cuts if self.stab is not None else 0

    def __call__(self, batch: list[Frame]) -> list[list[Frame]]:
        outs, panels = [], []
        for f in batch:
            rgb = f.rgb
            if self.stab is not None:
                rgb = self.stab(f.source, f.rgb)
                self.max_state_bytes = max(self.max_state_bytes, self.stab.state_bytes)
            if self.compare:
                panels.append(Frame(np.hstack([f.source, f.rgb, rgb]), f.pts))
            if self.upscale and self.resizer is not None and self.resizer.input_size != self.resizer.work_size:
                # Lanczos: sharper than bicubic when enlarging; area averaging when a --scale > 1 is undone
                up = self.resizer.input_size[0] > self.resizer.work_size[0]
                rgb = cv2.resize(rgb, self.resizer.input_size,
                                 interpolation=cv2.INTER_LANCZOS4 if up else cv2.INTER_AREA)
            outs.append(Frame(rgb, f.pts))
        return [outs, panels] if self.compare else [outs]
