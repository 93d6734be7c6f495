"""InstanceNorm statistics shared across video frames, so that the output does not flicker.

Design. A CycleGAN generator normalises every feature map with that frame's own mean and variance.
Between two frames of one shot those statistics move a little (noise, motion, objects entering),
and the generator turns each small move into a global change of tone: flicker the input does not
have. `StableStats` replaces, in every norm layer, the frame's own (mean, var) by an exponential
moving average over the frames of the current shot:

    s_t = m * s_(t-1) + (1 - m) * x_t      (per layer, per channel; mean and variance separately)

carried in frame order inside a batch and across batches. The first frame of a shot uses its own
statistics, as a still image would. Shots are found from a cheap input signal computed before the
forward pass: the total-variation distance between the colour histograms of consecutive frames
(0 = same distribution, 1 = disjoint); above `cut_threshold` the averages restart. Motion inside a
shot moves histograms far less than a cut does, so the average follows the shot but not a new one.

Measured (benchmarks/bench_video.py, vintage generator, examples/clip.mp4): shared statistics cut the
residual left after warping frame t-1 onto frame t by the input's optical flow (real motion cancels,
model-made change stays) by 15%, and the plain flicker measure (mean |out_t - out_t-1| / mean
|in_t - in_t-1| within shots) by 3.4%. The plain measure cannot move much on a pan and zoom: an output
with no flicker at all, each photo translated once and filmed with the same camera move, scores only
2.6% below per-frame statistics, because nearly all frame-to-frame change there is real motion. With
the statistics hook on the fused channels_last path, sharing costs no measurable speed, so it is the
default; `stabilize=False` (`--no-stabilize`) gives each frame its own statistics, as a still image.
Per-frame statistics do have one virtue: they cancel global exposure changes, which the shared ones let
through (followed within a few frames, as the average moves).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .networks import InstanceNorm, instance_stats

BINS = 16


def colour_histogram(frame: np.ndarray) -> np.ndarray:
    """Normalised 3x16-bin histogram of a subsampled uint8/uint16 frame (cheap: a few thousand pixels)."""
    step = max(1, int(np.sqrt(frame.shape[0] * frame.shape[1] / 4096)))
    px = frame[::step, ::step].reshape(-1, 3)
    shift = 12 if frame.dtype == np.uint16 else 4
    idx = (px >> shift).astype(np.int64) + np.arange(3) * BINS
    return np.bincount(idx.ravel(), minlength=3 * BINS).astype(np.float64) / (3 * px.shape[0])


class StableStats:
    """Installs itself as the `stats_hook` of a generator's norms; call `next_frames` before each batch.

    Tiled frames work too: the tiler hands its whole-frame statistics to `share` (networks.StatsHook).

    Give it the `engine.Translator` that will run the frames: the translator may run its own copy of
    the generator (bf16 on CPU), and only that copy's norms see the frames. A bare generator is taken too.
    """

    def __init__(self, translator, momentum: float = 0.8, cut_threshold: float = 0.3):
        model = translator.model if isinstance(getattr(translator, "model", None), torch.nn.Module) else translator
        if not hasattr(model, "norms"):
            raise TypeError(f"StableStats needs a Translator or a cyclebatch generator, not {type(translator).__name__}")
        self.norms: list[InstanceNorm] = model.norms()
        self.momentum = momentum
        self.cut_threshold = cut_threshold
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cuts: list[bool] = []
        self.n_cuts = 0
        self._last_hist: Optional[np.ndarray] = None
        self._saved: list = []

    def __enter__(self) -> "StableStats":
        # Keep whatever hook was there (tiling may install one) and put it back on exit.
        self._saved = [n.stats_hook for n in self.norms]
        for n in self.norms:
            n.stats_hook = self
        return self

    def __exit__(self, *exc) -> None:
        for n, h in zip(self.norms, self._saved):
            n.stats_hook = h

    def next_frames(self, frames: Sequence[np.ndarray]) -> None:
        """Tell the hook which of the coming batch's frames start a new shot."""
        self.cuts = []
        for f in frames:
            h = colour_histogram(f)
            cut = self._last_hist is None or 0.5 * np.abs(h - self._last_hist).sum() > self.cut_threshold
            self.cuts.append(bool(cut))
            self.n_cuts += int(cut and self._last_hist is not None)
            self._last_hist = h

    def __call__(self, norm: InstanceNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.share(norm, *instance_stats(x))

    def share(self, norm: InstanceNorm, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frames' own statistics ([N, C, 1, 1], frame order) in, the shot's running averages out."""
        if len(self.cuts) != mean.shape[0]:  # not fed by next_frames (a stray call): behave like plain IN
            return mean, var
        key, m = id(norm), self.momentum
        prev = self.state.get(key)
        means, vars_ = [], []
        for i in range(mean.shape[0]):
            if prev is None or self.cuts[i]:
                prev = (mean[i], var[i])
            else:
                prev = (m * prev[0] + (1 - m) * mean[i], m * prev[1] + (1 - m) * var[i])
            means.append(prev[0])
            vars_.append(prev[1])
        self.state[key] = prev
        return torch.stack(means), torch.stack(vars_)
