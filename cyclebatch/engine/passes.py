"""What the engine's passes hand around: the plan of a size, the counters, a submitted batch, the
listener of passes, and the conversions between the model's [-1, 1] tensors and pixels."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
import torch

from ..errors import CycleBatchError

if TYPE_CHECKING:
    from .translator import Translator


class ChunkListener(Protocol):
    """Told about every forward pass a batch is split into (video's shared statistics listen)."""

    def begin(self, images: Sequence[np.ndarray]) -> None:
        """The next pass runs exactly these images, in this order."""

    def abort(self) -> None:
        """That pass ran out of memory: forget it; the same images come again through `begin`."""


@dataclass
class ShapePlan:
    """How images of one size run, decided once from the memory free at the first one (re-reading it
    per image let the allocator's own reserve shrink the batches), and lowered by out-of-memory errors."""

    batch: int
    tiled: bool
    budget: int
    tile_plan: object = None  # tiling.TilePlan, kept after an out-of-memory retry made it smaller
    passes: int = 0


@dataclass
class EngineStats:
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)  # images per full-frame pass
    out_of_memory: int = 0  # passes that ran out of memory and were retried smaller
    tiled_images: int = 0
    wider_precision_reruns: int = 0  # batches re-run in fp32 after non-finite output
    backends: collections.Counter = field(default_factory=collections.Counter)  # images per backend that ran them


class Pending:
    """A submitted batch: its results are on their way back from the device."""

    def __init__(self, translator: "Translator", images: Sequence[np.ndarray], parts: list):
        self._t, self._images, self._parts = translator, images, parts

    def result(self) -> list[np.ndarray]:
        return self._t._collect(self._images, self._parts)


def quantize(y: torch.Tensor, dtype=np.uint8) -> tuple[torch.Tensor, torch.Tensor]:
    """[-1, 1] NCHW float -> NHWC integers on the device (16-bit as int16, u - 32768), and one flag per
    image: all of its values finite. A NaN survives the clamp and would be written as black."""
    y = y.float()
    # One pass: a sum is finite exactly when every value is (a NaN or an infinity makes it NaN or infinite),
    # short of finite values near 1e33, which no image model gives (they would only cost an fp32 re-run).
    # isfinite + all took four passes: 5% of a small student's time at 512 px.
    finite = torch.isfinite(y.sum(dim=(1, 2, 3)))
    if dtype == np.uint16:
        q = y.add(1.0).mul_(65535.0 / 2.0).round_().clamp_(0, 65535).sub_(32768.0).to(torch.int16)
    else:
        q = y.add(1.0).mul_(255.0 / 2.0).round_().clamp_(0, 255).to(torch.uint8)
    return q.permute(0, 2, 3, 1), finite

def host_pixels(q: torch.Tensor, dtype=np.uint8) -> list[np.ndarray]:
    a = q.cpu().numpy()
    if dtype == np.uint16:
        a = np.bitwise_xor(a.view(np.uint16), np.uint16(0x8000))
    return [np.ascontiguousarray(x) for x in a]

def to_pixels(y: torch.Tensor, dtype=np.uint8) -> list[np.ndarray]:
    q, finite = quantize(y, dtype)
    out = host_pixels(q, dtype)
    if not bool(finite.all()):
        raise NonFiniteOutput(int((~finite).sum()))
    return out


class NonFiniteOutput(CycleBatchError):
    def __init__(self, images: int):
        super().__init__("the model produced NaN or infinite values (a broken checkpoint, or weights out of "
                         "range for this precision); nothing was written")
        self.images = images
