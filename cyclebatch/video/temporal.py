"""Temporal stabilisation of translated video (FlowStabilizer); the measure's core is here and in measure.py.

A CycleGAN translates each frame on its own, so what the model invents (tones, grain, texture) changes
from frame to frame where the input is still. FlowStabilizer works after the model and blind to it: it
sees the input frames and their per-frame translations only, so tiling, batches, precision and backend
do not matter. Per frame t, in order:

- flow on the input, both ways between t and t-1 (OpenCV DIS, solved at a reduced size: half the
  frame's longer side within 128..256 px; the forward flow, which only checks the backward one, without
  the variational refinement);
- trust per pixel in [0, 1]: visible by Ruder et al.'s tests (forward-backward consistency, no motion
  boundary, inside the frame), feathered (Gaussian, sigma 1 flow pixel) so the mask has no hard outline,
  x a brightness-constancy ramp on the input (the previous input warped onto this one: full trust up to
  an L1 difference of 40 levels over RGB, none from 160);
- the model-added change R_t = P_t - I_t (P the translation) is blended with the previous result's S,
  warped along the flow (bilinear). The correction d = S~_(t-1) - R_t is split in two bands:
  * tone: its low frequencies by normalized convolution over the trusted pixels, on a 64 px grid with a
    Gaussian of 12% of the frame (G(trust d) / G(trust), a large hole falls back to the frame's mean). It
    is defined everywhere, also where the flow is not trusted, and smooth, so a change of the
    translation's overall tone is corrected as a whole, never in the shape of the trust mask. Weight
    0.85, its size capped at 16 levels: a large move of the tone (InstanceNorm answering new content) is
    followed at once beyond that and the rest fades at 0.85 a frame, a flicker below it is held;
  * detail: d less its tone, x 0.85 x trust per pixel (grain and texture carried along the flow; where the
    flow fails the current translation's detail is kept: no trail). Its step at the mask's edge is only
    as large as the detail's own flicker;
  S_t = R_t + tone + detail, O_t = I_t + S_t. Carrying the change and not the pixels keeps the input's
  own edges and motion from the current frame;
- the input's exposure change between t-1 and t (a tone curve per channel fitted on the trusted pixels)
  is taken out of the carried change: InstanceNorm cancels most of it in P, and carried it added the
  input's brighter edges up into edges that neither P nor I has;
- restart (O_t = P_t exactly) at a cut: told by the caller, found by the colour-histogram detector of
  video/shared_stats.py, or when under 20% of the pixels are fully trusted (a cut that detector misses).

Why (issue 29). The old blend, S_t = w S~ + (1 - w) R_t with w = 0.85 x a thresholded trust mask, kept
the old tone where the flow was trusted and took the new one where it was not: when the translation's
tone jumped (bikes.mp4 frames 0-50: a car enters, P's L* goes from 45 to 60 while the input stays) the
mask's blocks were printed into the picture. Measured with measure.py's seam measure (worst frame's
share of pixels with an edge in neither P nor I; goal <= 0.1%) by benchmarks/bench_temporal.py on 11
clips (vintage generator, bf16, 2 CPU cores), old -> new: tuned half bikes-0 7.58% -> 0.03%, carphone
0.04 -> 0.01, vtest 0.10 -> 0.02, box 0.01 -> 0.00, bikes with a synthetic lighting ramp 2.37 -> 0.07;
held out megamind 0.36 -> 0.15 (fails: a talking mouth's carried detail), cup 0.24 -> 0.02, city 1.06 ->
0.04, tree 0.28 -> 0.09, bunny 0.00 -> 0.00, carphone with a synthetic flash 1.76 -> 0.10. E_warp of R
(ratio to per-frame) stays 0.13-0.29x everywhere but vtest (0.42x, old 0.46x: its flicker is on the
walking people, where no flow is trusted). What chose the settings, on the tuned half: without the
feathering seams 0.135% on bikes-0 (0.029% with); with cubic resampling of the carried change 0.47% on
the ramp clip (bilinear 0.07%), without the exposure curve 2.2%; an uncapped tone band drifts 1.9 L* on
bikes-0 (goal 1.5; the cap at 16: 0.75 L*), a cap of 8 lets flicker through (E_warp of R 0.32x on
bikes-0, 0.22x at 16); the tone band's width (6% or 12%) changed little. Speed: see the README.

The step splits in two: `motion` (flow, trust, exposure curve) needs only the two input frames, so the
video pipeline computes it a few frames ahead in worker threads; the blend with the previous result is
the only sequential part.

The measure's core (visibility, pair geometry and E_warp of Lai et al. 2018) is here too, so that tests
and benchmarks grade outputs the same way; the evaluation flow is DIS at its MEDIUM preset at full size,
not the stabiliser's. Seams, drift and the rest: measure.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from .shared_stats import colour_histogram

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

        stab = FlowStabilizer()
        for frame, translated in ...:           # in display order, one video (one instance per video)
            out = stab(frame, translated, cut)  # cut: True at a shot's first frame; None: detect it here

    Frames are HxWx3 uint8 RGB. Nothing here touches the model, and OpenCV releases the GIL in every
    heavy step, so it can run in the encoder's thread. The state is the previous frame only.

    memory: weight of the warped past's detail where the flow is trusted (0.85: a flicker falls to ~1%
    of its frame-to-frame energy; a real change is followed with a time constant of ~7 frames).
    tone_memory: the same for the tone band (default: memory); tone_limit: its largest correction in
    levels (a larger move of the translation's tone is followed at once beyond it); tone_scale: its
    Gaussian, as a share of the frame's longer side.
    feather: sigma of the trust mask's blur, in flow pixels. exposure: take the input's exposure change out
    of the carried change.
    tolerance: (full, none) trust at this L1 difference (levels, summed over RGB) between the input and
    the previous input warped onto it.
    flow_side: the longer side of the frame the flow is computed on (default: half the video's, within
    128..256).
    min_trusted: below this share of fully trusted pixels the frame restarts (a cut the histogram missed).
    """

    def __init__(self, memory: float = 0.85, tolerance: tuple[float, float] = (40.0, 160.0),
                 flow_side: Optional[int] = None, cut_threshold: float = 0.3, min_trusted: float = 0.2,
                 tone_scale: float = 0.12, tone_memory: Optional[float] = None,
                 tone_limit: float = 16.0, feather: float = 1.0, exposure: bool = True):
        lo, hi = map(float, tolerance)
        if not 0 <= memory < 1:
            raise ValueError("memory must be in [0, 1)")
        if not 0 <= lo < hi <= 255:
            raise ValueError("tolerance must be two levels 0 <= full < none <= 255")
        self.memory, self.flow_side, self._full_trust = memory, flow_side, lo
        self.tone_memory = memory if tone_memory is None else tone_memory
        self.tone_scale, self.tone_limit, self.feather = tone_scale, float(tone_limit), feather
        self.exposure = exposure
        self.cut_threshold, self.min_trusted = cut_threshold, min_trusted
        # trust by input difference (uint8 L1, saturated at 255): a ramp from 1 to 0
        self._weight_of = np.clip((hi - np.arange(256)) / (hi - lo), 0, 1).astype(np.float32)
        # DIS presets solve at 1/4 of the size they are given and upsample: too coarse for an object a few
        # dozen pixels wide. Here the frame is made small instead and solved at that size, with the fastest
        # patch search plus 5 variational refinement passes: a smooth flow (measured: trusted share of
        # carphone's pixels 60% without them, 84% with), so fewer false motion boundaries.
        self._dis = self._new_dis()
        self._local = threading.local()  # a DIS per thread for `motion` (one instance is not thread-safe)
        self.restarts = 0  # shots restarted after the first frame (told, detected, or untrusted flow)
        self.cuts = 0  # of those, the cuts (told or found by the colour histogram)
        self.reset()

    @staticmethod
    def _new_dis() -> tuple:
        """Two DIS solvers: for the flow back to the previous frame, which carries the change, and for the
        flow forward, which only checks it (Ruder's forward-backward test) and so goes without the
        variational refinement: it then costs about half as much (5.7 against 10.4 ms of one core at 640x480),
        measured (benchmarks/bench_temporal.py, all 11 clips) to change E_warp of R by at most 0.01x and the
        worst seams by at most 0.01% of the pixels. Solving the check at half the flow size instead saved
        more, but let tree's seams through (0.09% -> 0.13%)."""
        pair = []
        for refine in (5, 0):
            dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
            dis.setFinestScale(0)
            dis.setVariationalRefinementIterations(refine)
            pair.append(dis)
        return tuple(pair)

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

    def flow_size(self, h: int, w: int) -> tuple[int, int]:
        # Measured with benchmarks/bench_temporal.py: a smaller flow is smoother and trusted on more pixels
        # (E_warp of R 0.23x at 128 px vs 0.28x at the full 176 px of carphone), a larger one follows
        # smaller objects (bikes, 640 px: 0.22x at 128, 0.16x at 256; no gain above). 256 bounds the cost.
        side = self.flow_side or min(256, max(128, max(h, w) // 2))
        s = min(1.0, side / max(h, w))
        return max(16, round(h * s)), max(16, round(w * s))

    def _grid(self, h: int, w: int) -> np.ndarray:
        """Pixel coordinates as one 2-channel float32 image (the map cv2.remap takes), kept per size."""
        if (h, w) not in self._grids:
            self._grids[(h, w)] = np.dstack(grid(h, w))
        return self._grids[(h, w)]

    def _flow_input(self, frame: np.ndarray) -> np.ndarray:
        """The grey frame at the size the flow is solved at."""
        h, w = frame.shape[:2]
        fh, fw = self.flow_size(h, w)
        g = gray(frame)
        return g if (fh, fw) == (h, w) else cv2.resize(g, (fw, fh), interpolation=cv2.INTER_AREA)

    def motion(self, prev: np.ndarray, frame: np.ndarray) -> "Motion":
        """The part of a step that depends on the two input frames only: flow, trust and the weight of the
        past. Safe to run for many pairs at once in other threads (each thread gets its own DIS), ahead of
        the sequential blend: `stab(frame, translated, motion=stab.motion(prev, frame))` gives what
        `stab(frame, translated)` gives."""
        dis = getattr(self._local, "dis", None)
        if dis is None:
            dis = self._local.dis = self._new_dis()
        return self._motion(prev, self._flow_input(prev), frame, self._flow_input(frame), dis)

    def __call__(self, frame: np.ndarray, translated: np.ndarray, cut: Optional[bool] = None,
                 motion: Optional["Motion"] = None) -> np.ndarray:
        if frame.shape != translated.shape or frame.dtype != np.uint8 or translated.dtype != np.uint8 \
                or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError("FlowStabilizer needs same-size uint8 RGB frames")
        if self._frame is not None and self._frame.shape != frame.shape:
            self.reset()  # a new size: nothing of the old one carries over
        hist = colour_histogram(frame)
        if cut is None:
            cut = self._hist is not None and 0.5 * np.abs(hist - self._hist).sum() > self.cut_threshold
        self._hist = hist
        self.cuts += int(bool(cut) and self._frame is not None)
        small = self._flow_input(frame) if motion is None else None  # kept for the next frame's flow
        # The model-added change is what is carried, not the pixels: edges and real changes of the input
        # come from the current frame, only what the model invents is taken from the past.
        residual = cv2.subtract(translated, frame, dtype=cv2.CV_32F)
        out = None
        if not cut and self._frame is not None:
            if motion is None:
                prev_small = self._small if self._small is not None else self._flow_input(self._frame)
                motion = self._motion(self._frame, prev_small, frame, small, self._dis)
            out = self._blend(motion, residual)
        if out is None:
            self.restarts += int(self._frame is not None)
            out, result = residual, translated.copy()
        else:
            result = cv2.add(frame, out, dtype=cv2.CV_8U)  # rounded and saturated
        # A copy: the caller may reuse its frame buffer (1% of the time a frame takes here).
        self._frame, self._small, self._residual = frame.copy(), small, out
        return result

    def _motion(self, prev, prev_small, frame, small, dis) -> "Motion":
        h, w = frame.shape[:2]
        sh, sw = small.shape
        back = dis[0].calc(small, prev_small, None)  # pixels of this frame -> the previous one
        fore = dis[1].calc(prev_small, small, None)
        sgrid = self._grid(sh, sw)
        trust = visible(back, fore, sgrid[..., 0], sgrid[..., 1]).astype(np.float32)
        if self.feather > 0:  # soft edges: the mask's outline must not print into the picture
            trust = cv2.GaussianBlur(trust, (0, 0), self.feather)
        if (sh, sw) != (h, w):
            trust = cv2.resize(trust, (w, h), interpolation=cv2.INTER_LINEAR)
            back *= np.float32([w / sw, h / sh])  # to full-size pixels, while it is small
            back = cv2.resize(back, (w, h), interpolation=cv2.INTER_LINEAR)
        where = cv2.add(back, self._grid(h, w))
        # Brightness constancy on the input: where the warped previous input does not match this one, the
        # flow is wrong or the scene changed, and the past change would paint a ghost there.
        prev_in = cv2.remap(prev, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        err = cv2.transform(cv2.absdiff(frame, prev_in), np.ones((1, 3), np.float32))  # L1 over RGB, uint8
        # Restart where few pixels are fully trusted: a cut the histogram missed (bikes has one: 2% of
        # its pixels pass), or motion too fast to follow. Counted at full trust only: two unrelated
        # textures can still be half-alike everywhere.
        if np.count_nonzero((err <= self._full_trust) & (trust > 0.5)) < self.min_trusted * err.size:
            return Motion(None, None)
        weight = cv2.LUT(err, self._weight_of)
        weight *= trust
        # The input's exposure change, a tone curve per channel fitted on the trusted pixels (every 4th row
        # and column): a CycleGAN's InstanceNorm mostly cancels it, so the carried change must not pass the
        # input's brighter or darker edges into the output (they add up to edges in neither P nor I).
        shift = self._exposure_shift(frame[::4, ::4], prev_in[::4, ::4], weight[::4, ::4] > 0.5) \
            if self.exposure else None
        return Motion(where, weight, None if shift is None else (prev_in, shift))

    @staticmethod
    def _exposure_shift(now: np.ndarray, before: np.ndarray, sel: np.ndarray) -> Optional[np.ndarray]:
        """A table (256 x 1 x 3, float32) of what the exposure change took from each input level,
        level - curve(level); None when it is under half a level everywhere. The curve is the mean change
        binned by the mean of the two values (binning by one of them would read its noise as a change)."""
        if np.count_nonzero(sel) < 256:
            return None
        a = before[sel].astype(np.float32)
        b = now[sel].astype(np.float32)
        bins = np.minimum(((a + b) * (16 / 512)).astype(np.int64), 15)  # 16 bins of the mean level
        table = np.zeros((256, 1, 3), np.float32)
        levels = np.arange(256, dtype=np.float32)
        for c in range(3):
            n = np.bincount(bins[:, c], minlength=16)
            ok = n >= 32
            if ok.sum() < 2:
                return None
            centre = np.bincount(bins[:, c], (a[:, c] + b[:, c]) / 2, 16)[ok] / n[ok]
            change = np.bincount(bins[:, c], b[:, c] - a[:, c], 16)[ok] / n[ok]
            table[:, 0, c] = -np.interp(levels, centre, change)
        if np.abs(table).max() < 0.5:
            return None
        return table

    def _blend(self, motion: "Motion", residual) -> Optional[np.ndarray]:
        if motion.where is None:
            return None
        # Bilinear: cubic's overshoot, applied again every frame, sharpened the carried change's edges into
        # edges neither P nor I has (0.47% of bikes-ramp's pixels in its worst frame; bilinear 0.07%).
        prev = cv2.remap(self._residual, motion.where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        trust = motion.weight
        if motion.exposure is not None:  # the past as if it had been shot at this frame's exposure
            prev_in, table = motion.exposure
            prev += cv2.LUT(prev_in, table)
        d = cv2.subtract(prev, residual)  # what taking the past would change, per pixel
        h, w = d.shape[:2]
        trust3 = cv2.merge((trust, trust, trust))  # cv2's per-element ops need the channels matched
        # The tone band: the correction's low frequencies by normalized convolution over the trusted
        # pixels only, on a coarse grid. Defined everywhere (holes of untrusted flow are filled from around
        # them, a large one from the frame's mean), and smooth: a change of the translation's overall tone
        # is corrected as a whole, never in the shape of the trust mask.
        s = min(1.0, 64 / max(h, w))  # the tone is smooth: 64 px hold it, and cost nothing at 720p
        ch, cw = max(4, round(h * s)), max(4, round(w * s))
        td = cv2.resize(cv2.multiply(d, trust3), (cw, ch), interpolation=cv2.INTER_AREA)
        tw = cv2.resize(trust, (cw, ch), interpolation=cv2.INTER_AREA)
        sigma = max(0.5, self.tone_scale * max(ch, cw))
        gd, gw = cv2.GaussianBlur(td, (0, 0), sigma), cv2.GaussianBlur(tw, (0, 0), sigma)
        eps = 0.02
        mean = td.reshape(-1, 3).sum(0) / max(float(tw.sum()), 1e-6)
        band = (gd + eps * mean) / (gw + eps)[..., None]
        # A large move of the tone is the translation's answer to new content, not flicker: the tone band's
        # correction is capped at tone_limit levels, so all but that much of such a move is followed at once
        # and the rest fades at tone_memory a frame (bounded drift), while a flicker below it is held.
        tone = band * self.tone_memory
        size = np.abs(tone).max(axis=2)
        tone *= (self.tone_limit / np.maximum(size, self.tone_limit))[..., None]
        tone = cv2.resize(tone, (w, h), interpolation=cv2.INTER_LINEAR)
        band = cv2.resize(band, (w, h), interpolation=cv2.INTER_LINEAR)
        # The detail band, d less its tone, per pixel where the flow is trusted: grain and texture, whose
        # step at the mask's edge is only as large as their own flicker. In place: full-size float passes
        # are most of this step's cost.
        out = cv2.subtract(d, band, dst=d)
        cv2.multiply(out, trust3, dst=out, scale=self.memory)
        cv2.add(out, tone, dst=out)
        return cv2.add(out, residual, dst=out)


@dataclass
class Motion:
    """Frame t's pixels mapped onto frame t-1 (full-size float32 map) and the trust in [0, 1] there; both
    None when the flow is trusted on too few pixels (the step restarts from the translation)."""

    where: Optional[np.ndarray]
    weight: Optional[np.ndarray]
    exposure: Optional[tuple] = None  # (previous input warped here, uint8; its gain to this one, per channel)


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
