"""Seamless tiled translation of images too large for one forward pass.

Why not just cut the image: every InstanceNorm would see only its tile, so each tile gets its own
tone and the grid shows (21-28 dB from the full frame, DESIGN.md section 6). Here every norm uses
the whole image's statistics, computed exactly, so tiled output equals full-frame output up to
rounding, while memory stays a small constant per pixel:

- head (full to 1/4 resolution, 3 norms): one streaming pass over tiles per norm, each pass
  recomputing from the input with the norms before it fixed; the last pass stores the pre-norm
  1/4-resolution activation (16 values per input pixel at ngf 64).
- trunk (residual blocks at 1/4 resolution): run layer by layer over that stored activation in
  full-width row strips, each conv once, statistics accumulated as its output is written. Two
  buffers suffice: the residual stream and one conv output (the second conv of a block overwrites
  its own input one strip behind).
- tail (1/4 to full resolution, 2 norms): two statistics passes, then the output pass, in tiles.

Statistics are merged in float64 over each tile's own (non-context) region. Context only has to
cover the receptive field of the head or tail (a few pixels), not the whole network's.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

import cv2
import numpy as np
import torch
from torch import nn

from ..errors import CycleBatchError, is_out_of_memory
from .memory import estimate_bytes  # one cost model for full frames and tiles
from ..models.networks import InstanceNorm, ResnetBlock, ResnetGenerator, instance_stats

STATS_MODES = ("exact", "per-tile")
MIN_TILE = 32
TILE_SIZES = (1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32)


# ---------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class TilePlan:
    tile: int      # own-region side at input resolution (a multiple of 4)
    context: int   # margin read around each tile (a multiple of 4)
    batch: int     # tiles per forward pass
    strip: int     # rows per trunk strip at 1/4 resolution
    stats: str = "exact"
    spill: bool = False  # keep the two 1/4-resolution trunk buffers in a temporary file, not in memory

    def smaller(self) -> Optional["TilePlan"]:
        """The next plan to try after running out of memory: fewer tiles per pass, then smaller tiles."""
        if self.batch > 1:
            return replace(self, batch=self.batch // 2)
        if self.tile // 2 >= MIN_TILE:
            return replace(self, tile=_round4(self.tile // 2), strip=max(4, self.strip // 2))
        return None


def _round4(n: int) -> int:
    return int(math.ceil(n / 4) * 4)


def padded_size(height: int, width: int) -> tuple[int, int]:
    return _round4(height), _round4(width)


def pixel_bytes(height: int, width: int) -> int:
    """Input and output pixels (up to 16 bits each): the memory no method can avoid."""
    hp, wp = padded_size(height, width)
    return 2 * hp * wp * 3 * 2


def buffer_bytes(model: ResnetGenerator, height: int, width: int, dtype: Optional[torch.dtype]) -> int:
    """The exact method's other image-sized memory: two 1/4-resolution trunk buffers (16 values a pixel at ngf 64)."""
    hp, wp = padded_size(height, width)
    elem = 4 if dtype is None else 2
    return 2 * (hp // 4) * (wp // 4) * 4 * model.config.ngf * elem


def tile_bytes(model: ResnetGenerator, side: int, dtype: Optional[torch.dtype],
               limit: tuple[int, int] = (1 << 30, 1 << 30)) -> int:
    """One tile's working set; a tile read from a smaller image is clipped to it."""
    return estimate_bytes(model, min(side, limit[0]), min(side, limit[1]), dtype)


def plan_tiles(model: ResnetGenerator, height: int, width: int, budget: int, dtype: Optional[torch.dtype],
               tile: Optional[int] = None, context: int = 64, stats: str = "exact",
               max_batch: int = 4) -> TilePlan:
    """The largest tile (and batch) whose working set fits `budget` bytes; `tile` forces the size."""
    if stats not in STATS_MODES:
        raise CycleBatchError(f"unknown tile statistics '{stats}' (use {' or '.join(STATS_MODES)})")
    context = _round4(max(0, context))
    if not model.norms():  # no InstanceNorm (BatchNorm, none): plain tiles, exact with enough context
        context = max(context, _round4(model.receptive_radius))
    hp, wp = padded_size(height, width)
    fixed, spill = pixel_bytes(height, width), False
    if stats == "exact":
        # Past the budget the trunk buffers go to a temporary file, so memory stays bounded as images grow.
        spill = fixed + buffer_bytes(model, height, width, dtype) + tile_bytes(model, 256, dtype, (hp, wp)) > budget
        fixed += 0 if spill else buffer_bytes(model, height, width, dtype)
    if tile is not None:
        if tile < MIN_TILE:
            raise CycleBatchError(f"tile size {tile} is too small (at least {MIN_TILE} px)")
        side = _round4(tile)
    else:
        side = next((t for t in TILE_SIZES if fixed + tile_bytes(model, t + 2 * context, dtype, (hp, wp)) <= budget), None)
        if side is None:
            need = fixed + tile_bytes(model, MIN_TILE + 2 * context, dtype, (hp, wp))
            raise CycleBatchError(f"a {width}x{height} image needs at least {need / 2**20:.0f} MiB to translate in "
                                  f"tiles; the memory budget is {budget / 2**20:.0f} MiB (--max-memory)")
        side = min(side, _round4(max(hp, wp)))
    per_tile = tile_bytes(model, side + 2 * context, dtype, (hp, wp))
    batch = int(max(1, min(max_batch, (budget - fixed) // max(per_tile, 1))))
    # A trunk strip keeps about six float32 copies alive (input, normalised, padded, output, the one
    # pending its write, statistics); a quarter of a tile's working set bounds them all. Each strip
    # recomputes two halo rows, so strips get no shorter than 8 rows.
    row_bytes = (wp // 4) * 4 * model.config.ngf * 4
    strip = int(max(8, min(64, hp // 4, per_tile // (4 * 6 * row_bytes))))
    return TilePlan(side, context, batch, strip, stats, spill)


# ---------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Tile:
    y0: int; y1: int; x0: int; x1: int      # own region, padded input coordinates
    iy0: int; iy1: int; ix0: int; ix1: int  # region read (own region plus context, clipped)

    @property
    def shape(self) -> tuple[int, int]:
        return self.iy1 - self.iy0, self.ix1 - self.ix0


def _cuts(n: int, tile: int) -> list[int]:
    """Boundaries splitting n (a multiple of 4) into near-equal parts of at most `tile`, on multiples of 4.

    Even parts rather than full tiles plus a sliver: a 4 px remainder would be one pixel at 1/4 scale."""
    parts = -(-n // tile)
    return [min(n, _round4(n * i / parts)) for i in range(parts + 1)]


def tile_grid(hp: int, wp: int, tile: int, context: int) -> list[Tile]:
    ys, xs = _cuts(hp, tile), _cuts(wp, tile)
    return [Tile(y0, y1, x0, x1, max(0, y0 - context), min(hp, y1 + context), max(0, x0 - context),
                 min(wp, x1 + context))
            for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]


def _batches(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    """Tiles of one read shape go through the model together."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault(t.shape, []).append(t)
    for group in groups.values():
        for i in range(0, len(group), size):
            yield group[i:i + size]


def _own(y: torch.Tensor, t: Tile, i: int) -> torch.Tensor:
    """Sample i's own region of an output whose scale relative to the read region shows in its shape."""
    s = y.shape[-2] / (t.iy1 - t.iy0)
    return y[i:i + 1, :, round((t.y0 - t.iy0) * s):round((t.y1 - t.iy0) * s),
             round((t.x0 - t.ix0) * s):round((t.x1 - t.ix0) * s)]


# ---------------------------------------------------------------------------- statistics

class RunningStats:
    """Per-channel count, mean and M2 in float64, merged tile by tile (Chan et al.'s parallel update)."""

    def __init__(self):
        self.n = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor) -> None:
        n = x.shape[-2] * x.shape[-1]
        if n == 0:
            return
        if x.device.type == "cpu":  # a tile's own region is a strided view: packed, it takes the fast path
            x = x.contiguous(memory_format=torch.channels_last)  # (0.15 vs 0.82 s of a 1024x683 image's 5 s)
        mean, var = instance_stats(x)  # one sample at a time
        # Merged on the device, with no sync per tile: the host waits once per norm, in `result`.
        # MPS has no float64; there float32 Chan merges are still far below bf16/fp16 rounding.
        acc = torch.float32 if x.device.type == "mps" else torch.float64
        mean, m2 = mean.to(acc).reshape(-1), var.to(acc).reshape(-1) * n
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total

    def result(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        var = self.m2 / self.n
        return (self.mean.float().view(1, -1, 1, 1).to(device), var.float().view(1, -1, 1, 1).to(device))


def _run_layers(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Every tile and strip computation goes through here (tests simulate running out of memory on it)."""
    for layer in layers:
        x = layer(x)
    return x


def _normalize(x: torch.Tensor, norm: InstanceNorm, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    mean, var = stats
    y = (x.float() - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        y = y * norm.weight.view(1, -1, 1, 1).float() + norm.bias.view(1, -1, 1, 1).float()
    return y


# ---------------------------------------------------------------------------- the tiler

class Tiler:
    """Translates one image at a time with a TilePlan; `translator` supplies device, precision and pixel I/O."""

    def __init__(self, translator, plan: TilePlan, progress: Optional[Callable[[str], None]] = None):
        self.progress = progress or (lambda phase: None)
        self.tr = translator
        self.plan = plan
        self.device = translator.device
        model: ResnetGenerator = translator.model
        layers = list(model.model)
        blocks = [i for i, m in enumerate(layers) if isinstance(m, ResnetBlock)]
        first, last = (blocks[0], blocks[-1]) if blocks else (len(layers), len(layers) - 1)
        self.head, self.blocks, self.tail = layers[:first], layers[first:last + 1], layers[last + 1:]
        self.all_layers = layers
        self.fixed: dict[InstanceNorm, tuple[torch.Tensor, torch.Tensor]] = {}

    # -------------------------------------------------- plumbing

    def _hooks(self, on: bool) -> None:
        """Install the whole-image statistics; afterwards put back whatever hooks were there (video's, say)."""
        norms = self.tr.model.norms()
        if on:
            self._saved = [n.stats_hook for n in norms]
            self._outer = {n: h for n, h in zip(norms, self._saved) if hasattr(h, "share")}
            for n in norms:
                n.stats_hook = lambda norm, x: self.fixed[norm]
        elif hasattr(self, "_saved"):
            for n, hook in zip(norms, self._saved):
                n.stats_hook = hook

    def _input(self, img: np.ndarray, tiles: list[Tile]) -> torch.Tensor:
        return self.tr.to_tensor([img[t.iy0:t.iy1, t.ix0:t.ix1] for t in tiles])

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.tr.model_input(x)

    def _pass(self, tiles: list[Tile], fetch: Callable[[list[Tile]], torch.Tensor], layers: list[nn.Module],
              consume: Callable[[Tile, torch.Tensor], None]) -> None:
        for batch in _batches(tiles, self.plan.batch):
            x = self._model_input(fetch(batch))
            with self.tr.autocast():
                y = _run_layers(layers, x)
            for i, t in enumerate(batch):
                consume(t, _own(y, t, i))
            del x, y

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if not self.plan.spill:
            return torch.empty(shape, dtype=dtype, device=self.device)
        # A deleted temporary file: the kernel pages it in and out, and nothing is left behind.
        storage = {torch.bfloat16: np.int16, torch.float16: np.float16, torch.float32: np.float32}[dtype]
        with tempfile.TemporaryFile(prefix="cyclebatch-tiles-") as f:
            arr = np.memmap(f, dtype=storage, mode="w+", shape=shape)
        t = torch.from_numpy(arr)
        return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t

    # -------------------------------------------------- public

    @torch.inference_mode()
    def translate(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        img = _pad_pixels(image)
        hp, wp = img.shape[:2]
        out = np.empty_like(img)
        tiles = tile_grid(hp, wp, self.plan.tile, self.plan.context)
        write = lambda t, y: out.__setitem__((slice(t.y0, t.y1), slice(t.x0, t.x1)),  # noqa: E731
                                             self.tr.to_pixels(y.float(), image.dtype)[0])
        fetch = lambda batch: self._input(img, batch)  # noqa: E731
        try:
            if self.plan.stats == "per-tile" or not self.tr.model.norms():  # no statistics to share
                self._pass(tiles, fetch, self.all_layers, write)
            else:
                self._hooks(True)
                trunk = self._run_head(tiles, fetch, hp, wp)
                self._run_trunk(trunk)
                self._run_tail(tiles, trunk, write)
        finally:
            self._hooks(False)
            self.fixed.clear()
        return out if out.shape[:2] == (h, w) else np.ascontiguousarray(out[:h, :w])

    # -------------------------------------------------- exact statistics

    def _whole(self, norm: InstanceNorm, acc: RunningStats) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's statistics for `norm`, through the hook that was there before ours (video's shared ones)."""
        stats = acc.result(self.device)
        return self._outer[norm].share(norm, *stats) if norm in self._outer else stats

    def _stats_pass(self, tiles, fetch, layers, norm) -> None:
        acc = RunningStats()
        self._pass(tiles, fetch, layers[:layers.index(norm)], lambda t, y: acc.add(y))
        self.fixed[norm] = self._whole(norm, acc)

    def _run_head(self, tiles, fetch, hp, wp) -> torch.Tensor:
        norms = [m for m in self.head if isinstance(m, InstanceNorm)]
        for i, norm in enumerate(norms[:-1]):
            self._stats_pass(tiles, fetch, self.head, norm)
            self.progress(f"head statistics {i + 1}/{len(norms)}")
        last = self.head.index(norms[-1])
        channels = norms[-1].num_features
        dtype = self.tr.dtype or torch.float32
        trunk = self._buffer((1, channels, hp // 4, wp // 4), dtype)
        acc = RunningStats()

        def store(t: Tile, y: torch.Tensor) -> None:
            acc.add(y)
            trunk[:, :, t.y0 // 4:t.y1 // 4, t.x0 // 4:t.x1 // 4] = y

        self._pass(tiles, fetch, self.head[:last], store)
        self.fixed[norms[-1]] = self._whole(norms[-1], acc)
        for r in range(0, trunk.shape[2], self.plan.strip):  # the head's last norm and ReLU, in place
            with self.tr.autocast():
                part = trunk[:, :, r:r + self.plan.strip].to(self.device)
                trunk[:, :, r:r + self.plan.strip] = _run_layers(self.head[last:], part)
        self.progress("head done")
        return trunk

    def _conv_strips(self, src: torch.Tensor, dst: torch.Tensor, pad: nn.Module, conv: nn.Module,
                     pre: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> RunningStats:
        """dst = conv(pad(pre(src))) in full-width row strips; dst may be src (written one strip behind)."""
        acc, rows, pending = RunningStats(), src.shape[2], None
        for r0 in range(0, rows, self.plan.strip):
            r1 = min(rows, r0 + self.plan.strip)
            a, b = max(0, r0 - 1), min(rows, r1 + 1)
            x = src[:, :, a:b].to(self.device)
            if pre is not None:
                x = pre(x)
            with self.tr.autocast():
                y = _run_layers([pad, conv], self._model_input(x))[:, :, r0 - a:r0 - a + (r1 - r0)]
            acc.add(y)
            if pending is not None:
                dst[:, :, pending[0]:pending[0] + pending[1].shape[2]] = pending[1]
            pending = (r0, y.to(dst.dtype))
            del x
        if pending is not None:
            dst[:, :, pending[0]:pending[0] + pending[1].shape[2]] = pending[1]
        return acc

    def _run_trunk(self, x: torch.Tensor) -> None:
        y = self._buffer(tuple(x.shape), x.dtype)
        for i, block in enumerate(self.blocks):
            mods = [m for m in block.conv_block if not isinstance(m, (nn.Dropout, nn.ReLU))]
            pad1, conv1, norm1, pad2, conv2, norm2 = mods
            s1 = self._whole(norm1, self._conv_strips(x, y, pad1, conv1, None))
            s2 = self._whole(norm2, self._conv_strips(y, y, pad2, conv2,
                                                      lambda t: torch.relu(_normalize(t, norm1, s1))))
            for r in range(0, x.shape[2], self.plan.strip):
                sl = (slice(None), slice(None), slice(r, r + self.plan.strip))
                x[sl] = (x[sl].to(self.device).float() + _normalize(y[sl].to(self.device), norm2, s2)).to(x.dtype)
            self.progress(f"trunk block {i + 1}/{len(self.blocks)}")
        del y

    def _run_tail(self, tiles: list[Tile], trunk: torch.Tensor, write) -> None:
        # The tail reads the trunk at 1/4 scale: express its tiles in trunk coordinates.
        q = [Tile(t.y0 // 4, t.y1 // 4, t.x0 // 4, t.x1 // 4, t.iy0 // 4, t.iy1 // 4, t.ix0 // 4, t.ix1 // 4)
             for t in tiles]
        back = dict(zip(q, tiles))
        fetch_q = lambda batch: torch.cat([  # noqa: E731
            trunk[:, :, t.iy0:t.iy1, t.ix0:t.ix1] for t in batch])
        for i, norm in enumerate([m for m in self.tail if isinstance(m, InstanceNorm)]):
            self._stats_pass(q, fetch_q, self.tail, norm)
            self.progress(f"tail statistics {i + 1}")
        self._pass(q, fetch_q, self.tail, lambda t, y: write(back[t], y))


def _pad_pixels(image: np.ndarray) -> np.ndarray:
    """Pad H and W to multiples of 4 exactly as networks.pad_to_multiple does for the full frame."""
    h, w = image.shape[:2]
    ph, pw = (-h) % 4, (-w) % 4
    if not (ph or pw):
        return image
    border = cv2.BORDER_REFLECT_101 if (ph < h and pw < w) else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(np.ascontiguousarray(image), 0, ph, 0, pw, border)


def translate_tiled(translator, image: np.ndarray, plan: TilePlan,
                    on_retry: Optional[Callable[[TilePlan, BaseException], None]] = None,
                    progress: Optional[Callable[[str], None]] = None) -> tuple[np.ndarray, TilePlan]:
    """Translate one HxWx3 image in tiles; on running out of memory, retry with a smaller plan (never skip)."""
    while True:
        try:
            return Tiler(translator, plan, progress).translate(image), plan
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            smaller = plan.smaller()
            if translator.device.type == "cuda":
                torch.cuda.empty_cache()
            if smaller is None:
                h, w = image.shape[:2]
                raise CycleBatchError(f"out of memory translating a {w}x{h} image even with "
                                      f"{plan.tile} px tiles, one at a time") from None
            if on_retry is not None:
                on_retry(smaller, exc)
            plan = smaller
