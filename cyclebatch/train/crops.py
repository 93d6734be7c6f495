"""The distillation data: crops of the user's photos with the teacher's output for each, computed once.

The teacher is the expensive part (10-25x a student's cost), so it runs once per crop, through the engine
as `run` would run it, and its outputs are kept in the run folder (cache/crops.npz): epochs and a resumed
run read them back instead of running the teacher again. Crops come from the photos rescaled so that their
shorter side falls anywhere between one and three crop sizes: the student sees the photos' detail at the
scales `run` meets, from thumbnails to large prints.
"""

from __future__ import annotations

import io
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import CycleBatchError
from ..io.images import resize_to
from .data import load_rgb8
from .distill_config import DistillConfig
from .failure import writing

SCALES = (1.0, 3.0)  # the shorter side, in crop sizes, that a photo is rescaled to before a crop is cut
COLOUR_SHARE = 0.5  # of the crops, recoloured (recolour below) before the teacher sees them
TINT_SHARE = 0.5  # of the recoloured crops, given a smooth field of colour besides (grey and pale photos)
TINT_MAX = 0.3  # the field's largest chroma, in [0, 1] units of the channels
BATCH = 8  # crops per teacher pass
CROPS_PER_PHOTO = 48
# More crops where a run draws many samples: the 60-minute student (24k iterations of 16 over 1024 crops, each crop
# drawn ~375 times) scored 29.9 dB to the teacher on its own crops and 26.1 dB on fresh crops of the same photos,
# so the bank, not the photos, bounded it. Measured at 3000 iterations of 16 on 10 photos, scored on 8 others:
# 160 crops (each drawn 300 times) 22.92 dB, 1600 (30) 25.50 dB; 480 (100) 24.93 dB, 4800 (10) 25.48 dB.
MAX_DRAWS = 20  # a run draws each crop about this often at most
FASTEST_STEP = 0.15  # s an iteration at best (`small`, compiled, bf16 on AMX): bounds the samples a budget draws
CROPS_RANGE = (128, 8192)  # 8192 crops of 128 px and their targets: 0.8 GB, in memory and in cache/crops.npz
TEACHER_SHARE = 0.3  # of a --minutes budget, at most, for labelling crops with the teacher


@dataclass
class CropBank:
    inputs: np.ndarray  # N x S x S x 3 uint8
    targets: np.ndarray  # the teacher's outputs for them

    def __len__(self) -> int:
        return len(self.inputs)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()  # serialised first: the file is written by one call, atomically
        np.savez(buf, inputs=self.inputs, targets=self.targets)
        with writing(path) as tmp:
            tmp.write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> Optional["CropBank"]:
        try:
            with np.load(path) as z:
                return cls(z["inputs"], z["targets"])
        except (OSError, ValueError, KeyError):  # missing or damaged: the teacher runs again
            return None


def cut(photo: np.ndarray, size: int, rnd: random.Random) -> np.ndarray:
    """One size x size crop of `photo`, rescaled so that its shorter side is 1-3 crop sizes."""
    h, w = photo.shape[:2]
    short = rnd.uniform(*SCALES) * size
    f = short / min(h, w)
    new = (max(size, round(w * f)), max(size, round(h * f)))
    if new != (w, h):
        photo = resize_to(photo, new)
    h, w = photo.shape[:2]
    y, x = rnd.randint(0, h - size), rnd.randint(0, w - size)
    return np.ascontiguousarray(photo[y:y + size, x:x + size])


def recolour(crop: np.ndarray, rnd: random.Random) -> np.ndarray:
    """`crop` with its colours moved: hue turned about the grey axis, saturation, contrast and exposure scaled,
    a gamma; in TINT_SHARE of the calls a smooth field of colour added too.

    A user's few photos cover a corner of colour space; `run` later meets the rest (foliage after street
    scenes, skin after sky). The teacher labels the recoloured crop like any other, so the student learns the
    teacher's mapping over colours its photos lack. Turning and scaling leave a grey photo grey, hence the
    field: a student trained on grey and pale photos turned a red brick house grey where its teacher warmed it."""
    x = crop.astype(np.float32) / 255.0
    grey = x.mean(axis=2, keepdims=True)
    a = rnd.uniform(-np.pi, np.pi)
    u = np.full(3, 1 / np.sqrt(3.0), np.float32)  # rotation about the grey axis (Rodrigues)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]], np.float32)
    turn = np.eye(3, dtype=np.float32) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)
    chroma = (x - grey) @ turn.T * np.exp(rnd.uniform(np.log(0.4), np.log(1.8)))
    if rnd.random() < TINT_SHARE:
        chroma += colour_field(crop.shape[0], crop.shape[1], rnd)
    # wide ranges, measured: trained on 10 street frames and scored on 8 other photos (opencv-doc), gamma
    # 0.5-2, contrast 0.6-1.4 and exposure 0.6-1.6 gave 23.96 dB against 23.08 for gamma 0.6-1.6 and exposure
    # 0.7-1.25 without contrast (SSIM 0.768 against 0.789); what a student misses on new photos is mostly tone
    x = np.clip(grey + chroma, 0, 1) ** np.exp(rnd.uniform(np.log(0.5), np.log(2.0)))
    m = x.mean()
    x = np.clip((m + (x - m) * rnd.uniform(0.6, 1.4)) * rnd.uniform(0.6, 1.6), 0, 1)
    return np.ascontiguousarray((x * 255 + 0.5).astype(np.uint8))


def colour_field(h: int, w: int, rnd: random.Random) -> np.ndarray:
    """A smooth h x w x 3 field of chroma (each pixel's channels sum to zero: no change of brightness): random
    colours on a 1x1 to 4x4 grid, interpolated; its largest value between 0.05 and TINT_MAX."""
    import cv2

    n = rnd.randint(1, 4)
    cells = np.array([rnd.gauss(0.0, 1.0) for _ in range(n * n * 3)], np.float32).reshape(n, n, 3)
    cells -= cells.mean(axis=2, keepdims=True)
    cells *= rnd.uniform(0.05, TINT_MAX) / max(1e-6, float(np.abs(cells).max()))
    return cv2.resize(cells, (w, h), interpolation=cv2.INTER_LINEAR)


def crop_count(c: DistillConfig, photos: int) -> int:
    """Teacher-labelled crops for a run: 48 a photo, and more where the run will draw more than MAX_DRAWS samples
    of each (its iterations x batch; for a time budget, what the fastest measured step would draw in the time
    the teacher leaves); --crops overrides. The teacher's share of a budget (TEACHER_SHARE) still caps them."""
    if c.crops:
        return c.crops
    steps = c.iterations if c.iterations is not None else c.budget_seconds * (1 - TEACHER_SHARE) / FASTEST_STEP
    return int(np.clip(max(CROPS_PER_PHOTO * photos, steps * c.batch_size / MAX_DRAWS), *CROPS_RANGE))


def build(files: Sequence[Path], count: int, size: int, seed: int, translator, *, seconds: Optional[float] = None,
          warn: Callable[[str], None] = print, advance: Callable[[int], None] = lambda n: None,
          stopped: Callable[[], bool] = lambda: False) -> Optional[CropBank]:
    """`count` crops spread evenly over the photos, with the teacher's outputs. With `seconds`, fewer when the
    teacher is slower than that allows: the count follows the pace after the first batch (which pays for the
    engine's warm-up), so a slow start does not cut it for good; at least one batch is kept. Photos that fail to
    decode are skipped with a warning. None when `stopped()` turns true (Ctrl-C): after the batch in hand."""
    rnd = random.Random(seed)
    photos: list[np.ndarray] = []
    for path in files:
        try:
            photos.append(load_rgb8(path))
        except Exception as e:  # noqa: BLE001 - a damaged file costs its crops, not the run
            warn(f"skipping {e}" if isinstance(e, CycleBatchError) else f"skipping {path}: {type(e).__name__}: {e}")
    if not photos:
        raise CycleBatchError(f"{Path(files[0]).parent}: none of its {len(files)} photos can be decoded")
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    wanted, warm = count, None
    started = time.perf_counter()
    while len(inputs) < count:
        batch = [cut(photos[(len(inputs) + k) % len(photos)], size, rnd) for k in range(min(BATCH, count - len(inputs)))]
        batch = [recolour(b, rnd) if rnd.random() < COLOUR_SHARE else b for b in batch]
        targets += translator.translate_batch(batch)
        inputs += batch
        advance(len(batch))
        if stopped():
            return None
        if seconds is not None:
            # a 60-minute run's bank was cut from 8192 to 5383 crops by the pace of its first batches, and
            # labelled them in 5 of its 18 minutes: the estimate now follows the pace since the first batch
            now = time.perf_counter()
            if warm is None:
                warm, pace = (len(inputs), now), (now - started) / len(inputs)
            else:
                pace = (now - warm[1]) / (len(inputs) - warm[0])
            count = max(len(inputs), min(wanted, len(inputs) + int((seconds - (now - started)) / max(pace, 1e-9))))
    return CropBank(np.stack(inputs), np.stack(targets))
