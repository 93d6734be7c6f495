"""Unaligned image pairs for training: discovery, validation, augmentation, deterministic batches.

Every random choice for a sample (which B image, crop offsets, flips) comes from a generator seeded
by (seed, epoch, index), never from process-global state: the batches do not depend on how many
DataLoader workers decode them, and a run resumed mid-epoch sees exactly the batches it would have.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import CycleBatchError
from ..io.files import is_temp
from ..io.images import IMAGE_SUFFIXES, probe, read_image
from .config import TrainConfig


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order; a clear error when there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise CycleBatchError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise CycleBatchError(f"{folder}: is a file, not a folder of images")
    found = sorted(
        (p for p in folder.rglob("*")
         if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not is_temp(p) and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not found:
        raise CycleBatchError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                              "in subfolders too)")
    return found


def usable_images(folder: str | Path, warn: Callable[[str], None]) -> tuple[list[Path], int]:
    """The images whose headers read; the others are reported through `warn` and counted."""
    good, skipped = [], 0
    for path in find_images(folder):
        try:
            probe(path)
            good.append(path)
        except CycleBatchError as e:
            warn(f"skipping {e}")
            skipped += 1
    if not good:
        raise CycleBatchError(f"{folder}: none of its {skipped} image files can be read")
    return good, skipped


def load_rgb8(path: Path) -> np.ndarray:
    rgb = read_image(path).rgb
    if rgb.dtype == np.uint16:
        rgb = ((rgb.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return rgb


def augment(rgb: np.ndarray, c: TrainConfig, rnd: Optional[random.Random]) -> np.ndarray:
    """Resize as `c.preprocess` says, then crop (random, or centred when rnd is None) and maybe flip."""
    h, w = rgb.shape[:2]
    if c.preprocess == "resize_and_crop":
        size = (c.load_size, c.load_size)  # the official default: square, aspect ratio not kept
    elif c.preprocess == "scale_width_and_crop":
        size = (c.load_size, max(c.crop_size, round(h * c.load_size / w)))
    else:
        size = (w, h)
    scale = max(1.0, c.crop_size / min(size))  # never crop outside the image
    size = (max(c.crop_size, round(size[0] * scale)), max(c.crop_size, round(size[1] * scale)))
    if size != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))
    h, w = rgb.shape[:2]
    if rnd is None:
        y, x, flip = (h - c.crop_size) // 2, (w - c.crop_size) // 2, False
    else:
        y, x = rnd.randint(0, h - c.crop_size), rnd.randint(0, w - c.crop_size)
        flip = c.flip and rnd.random() < 0.5
    rgb = rgb[y:y + c.crop_size, x:x + c.crop_size]
    return np.ascontiguousarray(rgb[:, ::-1] if flip else rgb)


def _mix(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + p + 0x9E3779B9) % (1 << 62)
    return h


class UnpairedDataset(torch.utils.data.Dataset):
    """Item (epoch, i): A image i % len(A), a random B image, both augmented; plus unreadable paths."""

    def __init__(self, files_a: list[Path], files_b: list[Path], config: TrainConfig):
        self.a, self.b, self.config = files_a, files_b, config

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        rnd = random.Random(_mix(self.config.seed, epoch, i))
        j = rnd.randrange(len(self.b))
        bad: list[str] = []
        a = augment(self._read(self.a, i % len(self.a), bad), self.config, rnd)
        b = augment(self._read(self.b, j, bad), self.config, rnd)
        return torch.from_numpy(a), torch.from_numpy(b), bad

    @staticmethod
    def _read(files: list[Path], i: int, bad: list[str]) -> np.ndarray:
        # A file that fails to decode is replaced by the next one: a long run never dies of one bad image.
        for k in range(len(files)):
            path = files[(i + k) % len(files)]
            try:
                return load_rgb8(path)
            except Exception as e:  # CycleBatchError, and whatever else a damaged file provokes
                bad.append(str(e) if isinstance(e, CycleBatchError) else f"{path}: {type(e).__name__}: {e}")
        raise CycleBatchError(f"{files[0].parent}: no image in this folder can be decoded")


@dataclass
class Batch:
    a: torch.Tensor  # N x H x W x 3 uint8
    b: torch.Tensor
    bad: list[str]

    def pin_memory(self) -> "Batch":
        return Batch(self.a.pin_memory(), self.b.pin_memory(), self.bad)


def collate(items) -> Batch:
    return Batch(torch.stack([x[0] for x in items]), torch.stack([x[1] for x in items]),
                 [msg for x in items for msg in x[2]])


class EpochBatches(torch.utils.data.Sampler):
    """Batches of (epoch, index) keys for one epoch and one rank, from batch `start` on.

    The order is DistributedSampler's (shuffled with seed + epoch, split across ranks), so one
    process and many shard the same permutation; `start` skips what a resumed run already did.
    """

    def __init__(self, n: int, epoch: int, start: int, config: TrainConfig, rank: int = 0, world: int = 1):
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                                      seed=config.seed, drop_last=False)
        sampler.set_epoch(epoch)
        order = list(sampler)
        bs = config.batch_size
        self.batches = [[(epoch, i) for i in order[k:k + bs]] for k in range(0, len(order), bs)][start:]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)


def batches_per_epoch(n: int, config: TrainConfig, world: int = 1) -> int:
    per_rank = -(-n // world)
    return -(-per_rank // config.batch_size)


def _worker_init(_: int) -> None:
    # Ctrl-C reaches the whole process group: the main process handles it (checkpoint, then exit);
    # workers must keep serving batches until it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: UnpairedDataset, epoch: int, start: int, workers: int, pin: bool,
                rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
    sampler = EpochBatches(len(dataset), epoch, start, dataset.config, rank, world)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers, pin_memory=pin,
        worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None,
        # its own generator: creating an iterator must not draw from the global RNG (exact resume)
        generator=torch.Generator().manual_seed(dataset.config.seed + epoch),
    )


HELD_OUT_LIMIT = 4  # images per domain: enough rows to judge, few enough for a grid a person reads


def centre_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shorter side resized to `size` (aspect kept), then the centre size x size: no randomness at all."""
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize(new, Image.BICUBIC))
    h, w = rgb.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.array(rgb[y:y + size, x:x + size])  # a writable copy: torch.from_numpy takes it as is


def held_out_images(folder: str | Path, size: int, warn: Callable[[str], None],
                    limit: int = HELD_OUT_LIMIT) -> list[np.ndarray]:
    """The first `limit` readable images of a held-out folder, centre squares of `size` px: the same
    inputs every epoch, so the sample grids show progress rather than a new random crop."""
    files = find_images(folder)
    out = []
    for path in files:
        if len(out) == limit:
            break
        try:
            out.append(centre_square(load_rgb8(path), size))
        except Exception as e:  # one unreadable file costs a row of the grid, not the run
            warn(f"held-out image skipped: {e}" if isinstance(e, CycleBatchError)
                 else f"held-out image skipped: {path}: {type(e).__name__}: {e}")
    if not out:
        raise CycleBatchError(f"{folder}: none of its {len(files)} held-out image files can be read")
    return out


def grid_samples(files_a: list[Path], files_b: list[Path], c: TrainConfig, warn: Callable[[str], None],
                 resuming: bool = False) -> tuple[list[tuple[str, torch.Tensor]], bool]:
    """The inputs of the sample grids, fixed for the whole run: ([(domain, 1 x H x W x 3 uint8)], held out?).
    The held-out images when the config names them; else up to two centre-cropped training images a domain."""
    if c.val_a:
        try:
            return [(domain, torch.from_numpy(rgb).unsqueeze(0)) for domain, folder in (("A", c.val_a), ("B", c.val_b))
                    for rgb in held_out_images(folder, c.crop_size, warn)], True
        except CycleBatchError as e:
            if not resuming:  # a new run: most likely a typo, said before any work is done
                raise
            warn(f"{e}; the sample grids show training images instead")  # resuming: carry on
    out = []
    for domain, files in (("A", files_a), ("B", files_b)):
        for path in files[:2]:
            try:
                out.append((domain, torch.from_numpy(augment(load_rgb8(path), c, None)).unsqueeze(0)))
            except Exception:  # reported when the loader meets it; a sample is not worth a crash
                pass
    return out, False
