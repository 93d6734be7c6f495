"""The figures a temporal stabiliser is judged by, shared by tests/ and benchmarks/bench_temporal.py.

O is an output video, P the per-frame translation (`--temporal off`), I the input; frames HxWx3 uint8 RGB.

- seams (issue 29): per frame, the Sobel gradient magnitude of the grey image blurred by a Gaussian of
  sigma 1, divided by 8 (so a ramp of one level a pixel reads 1); a seam pixel is one where
  g_O - max(g_P, g_I) - 1 > 2: an edge of more than 3 levels that neither the translation nor the input
  has. The worst frame's share is what counts: a patchwork lasts a dozen frames, an average hides it;
- E_warp (Lai et al. 2018; temporal.pair_geometry / warp_error): pairs with under 10% visible pixels are
  cuts (a cut the colour histogram missed) and left out of every average;
- drift: the largest |mean L*(O) - mean L*(P)| after averaging each over ~2 s windows inside a shot;
- hidden PSNR: against P on the pixels of t+1 not visible in t (where trails show);
- look: mean |O - I| / mean |P - I|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from .shared_stats import colour_histogram
from .temporal import PRESETS, PairGeometry, pair_geometry, warp_error

MIN_VISIBLE = 0.1  # a pair with fewer visible pixels is a cut
SEAM_LEVELS = 2.0  # g_O - max(g_P, g_I) - 1 > this


def edge_strength(rgb: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude / 8 of the grey image blurred with sigma 1 (levels a pixel), float32."""
    g = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy) / 8


def seam_mask(out: np.ndarray, per_frame: np.ndarray, inp: np.ndarray) -> np.ndarray:
    """Pixels of `out` on an edge that neither `per_frame` nor `inp` has (bool)."""
    return edge_strength(out) - np.maximum(edge_strength(per_frame), edge_strength(inp)) - 1 > SEAM_LEVELS


def seam_shares(out: Sequence[np.ndarray], per_frame: Sequence[np.ndarray], inp: Sequence[np.ndarray]) -> np.ndarray:
    """Share of seam pixels, frame by frame."""
    return np.array([seam_mask(o, p, i).mean() for o, p, i in zip(out, per_frame, inp)])


def shot_starts(frames: Sequence[np.ndarray], threshold: float = 0.3) -> list[bool]:
    """The colour-histogram detector the video pipeline uses: True where a frame starts a shot."""
    hists = [colour_histogram(f) for f in frames]
    return [i == 0 or 0.5 * np.abs(hists[i] - hists[i - 1]).sum() > threshold for i in range(len(frames))]


def mean_lightness(rgb: np.ndarray) -> float:
    return float(cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[..., 0].mean())


@dataclass
class Figures:
    e_warp: float  # E_warp of the output O
    e_warp_r: float  # E_warp of the model-added change R = O - I
    psnr: float  # against P, all pixels
    psnr_hidden: float  # against P on the pixels not visible in the previous frame (where trails show)
    drift: float  # largest difference of ~2 s mean L* from P's, inside a shot
    strength: float  # mean |O - I| / mean |P - I|
    seams: float  # the worst frame's share of seam pixels
    seam_frame: int  # that frame


class Measure:
    """The figures of one clip for any number of outputs, against the evaluation flow (DIS MEDIUM at full
    resolution, computed once per pair of input frames). `cuts`: True where a frame starts a shot
    (default: the colour-histogram detector); pairs under `min_visible` are cuts too."""

    def __init__(self, frames: Sequence[np.ndarray], rate: float, cuts: Optional[Sequence[bool]] = None,
                 min_visible: float = MIN_VISIBLE, window_s: float = 2.0):
        self.frames, self.rate, self.window_s = list(frames), rate, window_s
        self.cuts = list(cuts) if cuts is not None else shot_starts(self.frames)
        self.geoms: dict[int, PairGeometry] = {}  # t -> pair (t, t+1)
        dis = cv2.DISOpticalFlow_create(PRESETS["medium"])
        for t in range(len(frames) - 1):
            if self.cuts[t + 1]:
                continue
            g = pair_geometry(frames[t], frames[t + 1], dis=dis)
            if g.visible.mean() < min_visible:
                self.cuts[t + 1] = True
                continue
            self.geoms[t] = g
        self.visible_share = float(np.mean([g.visible.mean() for g in self.geoms.values()])) if self.geoms else 0.0
        self._input_unit = self.unit(self.frames)
        self.e_warp_input = self.e_warp(self._input_unit)

    @staticmethod
    def unit(seq) -> list[np.ndarray]:
        return [np.asarray(x, np.float32) / 255 for x in seq]

    def e_warp(self, seq: list[np.ndarray]) -> float:
        if not self.geoms:
            return float("nan")
        return float(np.mean([warp_error(seq[t], seq[t + 1], g) for t, g in self.geoms.items()]))

    def shots(self) -> list[range]:
        starts = [t for t, c in enumerate(self.cuts) if c or t == 0] + [len(self.cuts)]
        return [range(a, b) for a, b in zip(starts, starts[1:])]

    def windowed(self, values: np.ndarray) -> np.ndarray:
        """Means over ~window_s sliding windows that stay inside a shot (a shorter shot: its mean)."""
        win = max(1, round(self.window_s * self.rate))
        out = []
        for shot in self.shots():
            v = values[shot.start:shot.stop]
            k = min(win, len(v))
            out.append(np.convolve(v, np.ones(k) / k, mode="valid"))
        return np.concatenate(out)

    def figures(self, out: Sequence[np.ndarray], per_frame: Sequence[np.ndarray]) -> Figures:
        o = self.unit(out)
        r = [a - b for a, b in zip(o, self._input_unit)]
        sq = lambda a, b: (np.asarray(a, np.float64) - b) ** 2  # noqa: E731
        total = np.mean([sq(a, b).mean() for a, b in zip(out, per_frame)])
        hid_sum = hid_n = 0.0
        for t, g in self.geoms.items():
            hid_sum += sq(out[t + 1], per_frame[t + 1])[g.hidden_next].sum()
            hid_n += 3 * g.hidden_next.sum()
        db = lambda mse: float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))  # noqa: E731
        light = lambda seq: self.windowed(np.array([mean_lightness(x) for x in seq]))  # noqa: E731
        drift = float(np.abs(light(out) - light(per_frame)).max())
        look = lambda seq: np.mean([np.abs(a.astype(np.float32) - b).mean()  # noqa: E731
                                    for a, b in zip(seq, self.frames)])
        seams = seam_shares(out, per_frame, self.frames)
        return Figures(self.e_warp(o), self.e_warp(r), db(total), db(hid_sum / max(hid_n, 1)), drift,
                       float(look(out) / max(look(per_frame), 1e-9)), float(seams.max()), int(seams.argmax()))


GOALS = ("seams <= 0.1% (worst frame), E_warp(R) <= 0.30x, excess E_warp(O) <= 0.50x where E_warp(P) >= "
         "1.2x E_warp(I), hidden PSNR >= min(35 dB, whole-frame PSNR), drift <= 1.5 L*, look >= 0.90x")


def excess(f: Figures, ref: Figures, e_input: float) -> float:
    """(E_warp(O) - E_warp(I)) / (E_warp(P) - E_warp(I)); NaN where P is not above the input."""
    return (f.e_warp - e_input) / (ref.e_warp - e_input) if ref.e_warp > e_input else float("nan")


def failures(f: Figures, ref: Figures, e_input: float) -> list[str]:
    """The goals of issue 29 this output misses, against the per-frame figures `ref`."""
    fails = []
    if f.seams > 0.001:
        fails.append("seams")
    if f.e_warp_r > 0.30 * ref.e_warp_r:
        fails.append("E_warp(R)")
    if ref.e_warp >= 1.2 * e_input and excess(f, ref, e_input) > 0.50:
        fails.append("excess")
    if f.psnr_hidden < min(35.0, f.psnr):
        fails.append("trails")
    if f.drift > 1.5:
        fails.append("drift")
    if f.strength < 0.90:
        fails.append("look")
    return fails
