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
the statistics hook on the fused channels_last path, sharing costs no measurable speed. It is
`--temporal stats` now: the flow stabiliser (temporal.py, the default) removes far more of the flicker;
`--temporal off` (`--no-stabilize`) gives each frame its own statistics, as a still image.
Per-frame statistics do have one virtue: they cancel global exposure changes, which the shared ones let
through (followed within a few frames, as the average moves).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..models.networks import InstanceNorm, instance_stats

BINS = 16


def colour_histogram(frame: np.ndarray) -> np.ndarray:
    """Normalised 3x16-bin histogram of a subsampled uint8/uint16 frame (cheap: a few thousand pixels)."""
    step = max(1, int(np.sqrt(frame.shape[0] * frame.shape[1] / 4096)))
    px = frame[::step, ::step].reshape(-1, 3)
    shift = 12 if frame.dtype == np.uint16 else 4
    idx = (px >> shift).astype(np.int64) + np.arange(3) * BINS
    return np.bincount(idx.ravel(), minlength=3 * BINS).astype(np.float64) / (3 * px.shape[0])


class StableStats:
    """Installs a hook on every norm of a generator and follows the engine's passes as its `ChunkListener`:
    `translator.translate_batch(frames, listener=stable)`.

    `begin(frames)` finds the cuts among a pass's frames and keeps the statistics as they were before it;
    `abort()` (that pass ran out of memory) puts them back, so a failed pass leaves no trace in the averages.
    A pass run twice without a new `begin` (the engine's fp32 re-run of non-finite output) starts again
    from the same statistics, so it cannot advance the averages twice either.

    torch.compile: the running statistics are tensors on the device and the shot structure of a pass is
    one weight tensor, so a compiled generator reads no Python values that change between passes and
    compiles once per shape, not once per pass (tests/test_video.py counts the graphs).

    Tiled frames work too: the tiler hands its whole-frame statistics to each hook's `share`
    (networks.StatsHook). Give it the `engine.Translator` that will run the frames: the translator may run
    its own copy of the generator (bf16 on CPU), and only that copy's norms see the frames. A bare
    generator is taken too.
    """

    def __init__(self, translator, momentum: float = 0.8, cut_threshold: float = 0.3):
        # A generator has a `model` attribute too (its layers): only a Translator's is the one to hook.
        model = translator if isinstance(translator, torch.nn.Module) else getattr(translator, "model", None)
        if not hasattr(model, "norms"):
            raise TypeError(f"StableStats needs a Translator or a cyclebatch generator, not {type(translator).__name__}")
        self.norms: list[InstanceNorm] = model.norms()
        self.device = next(model.parameters()).device
        self.momentum = momentum
        self.cut_threshold = cut_threshold
        self.cuts: list[bool] = []  # of the latest pass, frame by frame
        self.n_cuts = 0
        self.weights: Optional[torch.Tensor] = None  # [N, N + 1] for the latest pass (see _weights)
        self.hooks = [_NormHook(self, n, self.device) for n in self.norms]
        self._last_hist: Optional[np.ndarray] = None
        self._before: tuple = (None, 0)  # (_last_hist, n_cuts) before the latest pass
        self._saved: list = []

    def __enter__(self) -> "StableStats":
        # Keep whatever hook was there (tiling may install one) and put it back on exit.
        self._saved = [n.stats_hook for n in self.norms]
        for n, h in zip(self.norms, self.hooks):
            n.stats_hook = h
        return self

    def __exit__(self, *exc) -> None:
        for n, h in zip(self.norms, self._saved):
            n.stats_hook = h

    # ------------------------------------------------ engine.ChunkListener

    def begin(self, frames: Sequence[np.ndarray]) -> None:
        """The next pass runs these frames: find which start a new shot; remember the state before them."""
        self._before = (self._last_hist, self.n_cuts)
        for h in self.hooks:
            h.base = h.state
        self.cuts = []
        for f in frames:
            hist = colour_histogram(f)
            cut = self._last_hist is None or 0.5 * np.abs(hist - self._last_hist).sum() > self.cut_threshold
            self.cuts.append(bool(cut))
            self.n_cuts += int(cut and self._last_hist is not None)
            self._last_hist = hist
        self.weights = self._weights(self.cuts).to(self.device)

    def abort(self) -> None:
        """The pass since `begin` failed: back to the state before it."""
        self._last_hist, self.n_cuts = self._before
        for h in self.hooks:
            h.state = h.base

    def state(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each norm's running (mean, var), [1, C, 1, 1]: the shot's statistics after the latest pass."""
        return [h.state for h in self.hooks]

    def _weights(self, cuts: list[bool]) -> torch.Tensor:
        """The running average over a pass as one linear map: row i holds frame i's averaged statistics'
        weights on [state before the pass, frame 0, ..., frame N-1]. s_i = m s_(i-1) + (1 - m) x_i unrolled;
        a cut restarts at x_i. Weights, not a loop over frames: a few tensor ops per norm on a GPU."""
        n, m = len(cuts), self.momentum
        w = np.zeros((n, n + 1))
        for i, cut in enumerate(cuts):
            if cut:
                w[i, i + 1] = 1.0
            else:
                w[i] = m * (w[i - 1] if i else np.eye(1, n + 1)[0])
                w[i, i + 1] += 1 - m
        return torch.tensor(w, dtype=torch.float32)


class _NormHook:
    """One norm's running statistics. Its own object, so that a compiled graph finds them as attributes
    (no lookups keyed by id(norm), which dynamo would guard on)."""

    def __init__(self, owner: StableStats, norm: InstanceNorm, device: torch.device):
        self.owner = owner
        # Made in inference mode, as every later state is: a tensor of the other kind fails dynamo's guards.
        # Two tensors, not one: an aliased pair is guarded too. Their values are never used (the first
        # frame is always a cut).
        with torch.inference_mode():
            c = norm.num_features
            self.state = (torch.zeros(1, c, 1, 1, device=device), torch.ones(1, c, 1, 1, device=device))
        self.base = self.state  # before the current pass

    def __call__(self, norm: InstanceNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.share(norm, *instance_stats(x))

    def share(self, norm: InstanceNorm, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frames' own statistics ([N, C, 1, 1], frame order) in, the shot's running averages out."""
        w = self.owner.weights
        if w is None or w.shape[0] != mean.shape[0]:  # not announced by `begin` (per-tile passes): plain IN
            return mean, var
        w = w.view(*w.shape, 1, 1, 1)
        # Elementwise and summed, not a matmul: autocast would run a matmul in fp16. A weight of 0 takes
        # nothing, not even a NaN (0 * NaN is NaN): statistics that overflowed once restart at the next cut.
        means = torch.where(w != 0, w * torch.cat([self.base[0], mean.float()]).unsqueeze(0), 0).sum(1)
        vars_ = torch.where(w != 0, w * torch.cat([self.base[1], var.float()]).unsqueeze(0), 0).sum(1)
        self.state = (means[-1:], vars_[-1:])
        return means, vars_
