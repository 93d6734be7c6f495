"""Temporal stabilisation of translated video, and the measure it is judged by.

WIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from .stabilize import colour_histogram

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def visible(fw: np.ndarray, bw: np.ndarray, gx: Optional[np.ndarray] = None,
            gy: Optional[np.ndarray] = None) -> np.ndarray:
    """Pixels of frame a whose flow into frame b can be trusted (Ruder et al. 2016), as a bool mask.

    fw: flow a -> b at the pixels of a; bw: flow b -> a at the pixels of b. A pixel fails when the
    forward-backward check fails (|w_f + w_b|^2 > 0.01 (|w_f|^2 + |w_b|^2) + 0.5, w_b read at x + w_f:
    occluded or a wrong flow), on a motion boundary (|grad u|^2 + |grad v|^2 > 0.01 |w_f|^2 + 0.002), or
    where x + w_f leaves the frame.
    """
    h, w = fw.shape[:2]
    if gx is None or gy is None:
        gx, gy = grid(h, w)
    mx, my = gx + fw[..., 0], gy + fw[..., 1]
    back = cv2.remap(bw, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fw2 = fw[..., 0] ** 2 + fw[..., 1] ** 2
    s = fw + back
    consistent = s[..., 0] ** 2 + s[..., 1] ** 2 <= 0.01 * (fw2 + back[..., 0] ** 2 + back[..., 1] ** 2) + 0.5
    # Central differences (the [-1, 0, 1] kernel halved), x and y, of both flow components.
    grad2 = sum(cv2.Sobel(fw[..., c], cv2.CV_32F, dx, 1 - dx, ksize=1, scale=0.5) ** 2
                for c in (0, 1) for dx in (0, 1))
    smooth = grad2 <= 0.01 * fw2 + 0.002
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return consistent & smooth & inside


class FlowStabilizer:
    """Blends each frame's model-added change with the previous result's, carried along the input's flow.

    stab = FlowStabilizer(); for each frame in order: out = stab(frame_rgb, translated_rgb, cut).
    cut: True when the frame starts a shot, None to let the colour-histogram detector decide.
    """

    def __init__(self, memory: float = 0.85, flow_side: int = 384, preset: str = "ultrafast",
                 tolerance: tuple[float, float] = (12.0, 48.0), cut_threshold: float = 0.3,
                 min_trusted: float = 0.2, refine: Optional[int] = None):
        if not 0 <= memory < 1:
            raise ValueError("memory must be in [0, 1)")
        self.memory, self.flow_side, self.preset = memory, flow_side, preset
        self.tolerance, self.cut_threshold, self.min_trusted = tolerance, cut_threshold, min_trusted
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])
        # The presets estimate the flow at 1/4 of the size they are given and upsample it: too coarse for
        # an object a few dozen pixels wide. The frame is made small here instead, and solved at that size.
        self._dis.setFinestScale(0)
        if refine is not None:
            self._dis.setVariationalRefinementIterations(refine)
        self.restarts = 0
        self.reset()

    def reset(self) -> None:
        self._frame: Optional[np.ndarray] = None  # previous input, uint8
        self._small: Optional[np.ndarray] = None  # previous input, grey, at flow size
        self._residual: Optional[np.ndarray] = None  # previous output - input, float32
        self._hist: Optional[np.ndarray] = None
        self._grids: dict = {}

    @property
    def state_bytes(self) -> int:
        arrays = [self._frame, self._small, self._residual, self._hist, *self._grids.values()]
        return sum(a.nbytes for a in arrays if a is not None)

    def _flow_size(self, h: int, w: int) -> tuple[int, int]:
        s = min(1.0, self.flow_side / max(h, w))
        return max(8, round(h * s)), max(8, round(w * s))

    def _grid(self, h: int, w: int) -> np.ndarray:
        """Pixel coordinates as one 2-channel float32 image (the map cv2.remap takes), kept per size."""
        if (h, w) not in self._grids:
            self._grids[(h, w)] = np.dstack(grid(h, w))
        return self._grids[(h, w)]

    def __call__(self, frame: np.ndarray, translated: np.ndarray, cut: Optional[bool] = None) -> np.ndarray:
        if frame.shape != translated.shape or frame.dtype != np.uint8 or translated.dtype != np.uint8 \
                or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError("FlowStabilizer needs same-size uint8 RGB frames")
        h, w = frame.shape[:2]
        if self._frame is not None and self._frame.shape != frame.shape:
            self.reset()  # a new size: nothing of the old one carries over (the grids neither)
        hist = colour_histogram(frame)
        if cut is None:
            cut = self._hist is not None and 0.5 * np.abs(hist - self._hist).sum() > self.cut_threshold
        self._hist = hist
        fh, fw = self._flow_size(h, w)
        g = gray(frame)
        small = g if (fh, fw) == (h, w) else cv2.resize(g, (fw, fh), interpolation=cv2.INTER_AREA)
        residual = cv2.subtract(translated, frame, dtype=cv2.CV_32F)
        out = None if cut or self._frame is None else self._blend(frame, small, residual)
        if out is None:
            self.restarts += int(self._frame is not None)
            out, result = residual, translated.copy()
        else:
            result = cv2.add(frame, out, dtype=cv2.CV_8U)  # rounded and saturated
        self._frame, self._small, self._residual = frame, small, out
        return result

    def _blend(self, frame, small, residual) -> Optional[np.ndarray]:
        h, w = frame.shape[:2]
        sh, sw = small.shape
        back = self._dis.calc(small, self._small, None)  # pixels of this frame -> the previous one
        fore = self._dis.calc(self._small, small, None)
        sgrid = self._grid(sh, sw)
        trust = visible(back, fore, sgrid[..., 0], sgrid[..., 1]).astype(np.float32)
        if (sh, sw) != (h, w):
            trust = cv2.resize(trust, (w, h), interpolation=cv2.INTER_LINEAR)
            back = cv2.resize(back, (w, h), interpolation=cv2.INTER_LINEAR)
            back *= np.float32([w / sw, h / sh])
        where = back + self._grid(h, w)
        prev_in = cv2.remap(self._frame, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Brightness constancy on the input: where the warped previous input does not match this one, the
        # flow is wrong or the scene changed, and the past residual would paint a ghost.
        err = cv2.transform(cv2.absdiff(frame, prev_in), np.ones((1, 3), np.float32))  # L1 over RGB
        lo, hi = self.tolerance
        weight = np.clip((hi - err) * np.float32(1 / (hi - lo)), 0, 1) * trust
        if weight.mean() < self.min_trusted:  # a cut the histogram missed, or motion too fast to follow
            return None
        weight *= np.float32(self.memory)
        prev = cv2.remap(self._residual, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        prev -= residual
        prev *= weight[..., None]
        prev += residual
        return prev


# ---------------------------------------------------------------- the measure

@dataclass
class PairGeometry:
    """How frame t+1 maps onto frame t, from the optical flow of the input frames."""

    map_x: np.ndarray  # float32: where each pixel of t is in t+1
    map_y: np.ndarray
    visible: np.ndarray  # bool, pixels of t: visible in t+1 (Ruder's tests), the mask E_warp averages over
    hidden_next: np.ndarray  # bool, pixels of t+1 not visible in t: disocclusions and boundaries, where trails show


def pair_geometry(a: np.ndarray, b: np.ndarray, preset: str = "medium", dis=None) -> PairGeometry:
    """Flow both ways between two RGB input frames (DIS, at full resolution) and the visibility masks."""
    dis = dis or cv2.DISOpticalFlow_create(PRESETS[preset])
    ga, gb = gray(a), gray(b)
    fw, bw = dis.calc(ga, gb, None), dis.calc(gb, ga, None)
    gx, gy = grid(*ga.shape)
    return PairGeometry(gx + fw[..., 0], gy + fw[..., 1], visible(fw, bw, gx, gy), ~visible(bw, fw, gx, gy))


def warp_error(x_t: np.ndarray, x_next: np.ndarray, geom: PairGeometry) -> float:
    """E_warp of one pair (Lai et al. 2018): x_next warped back onto t, squared error summed over the
    channels, averaged over the visible pixels. Frames as float32 HxWxC (RGB in [0, 1], or a residual
    in [-1, 1]). NaN when no pixel is visible."""
    warped = cv2.remap(x_next, geom.map_x, geom.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    d = x_t - warped
    err = (d * d).sum(axis=2)[geom.visible]
    return float(err.mean()) if err.size else float("nan")
