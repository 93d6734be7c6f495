"""The translation engine: device, precision, batching and (for large images) tiling, in one place.

`run`, `video` and Python users all go through `Translator`. Pixels come in and go out as NumPy
HxWx3 arrays (uint8 or uint16); everything between is torch on the chosen device.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import CycleBatchError
from .networks import ResnetGenerator, full_frame_only, pad_to_multiple, with_batchnorm_mode

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CycleBatchError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CycleBatchError(f"device '{name}' asked for, but this PyTorch sees no CUDA GPU")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CycleBatchError(f"device '{name}' asked for, but MPS is not available here")
    return dev


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at about twice fp32 speed (measured: DESIGN.md section 5)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for plain fp32."""
    if name not in PRECISIONS:
        raise CycleBatchError(f"unknown precision '{name}' (use one of {', '.join(PRECISIONS)})")
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


class Translator:
    """Runs a generator over images. Same-size images batch together; padding never crosses images."""

    def __init__(self, model: ResnetGenerator, device: str = "auto", precision: str = "auto",
                 compile: bool = False, batch_size: Optional[int] = None, *, tile: Optional[int] = None,
                 context: int = 64, max_memory: Optional[int] = None, tile_stats: str = "exact",
                 batchnorm: str = "running"):
        """tile: force tiling with this tile size; otherwise images whose full-frame pass would exceed
        max_memory bytes (default: half the free memory) are tiled automatically. tile_stats "exact"
        (whole-image InstanceNorm statistics, seamless) or "per-tile" (the naive way, for comparison).
        batchnorm: "running" statistics or "per-image" ones, for BatchNorm models (networks.with_batchnorm_mode)."""
        from .tiling import STATS_MODES

        # issue 18: BatchNorm statistics mode (a converted copy, or the model itself); U-Nets never tile.
        model = with_batchnorm_mode(model, batchnorm)
        if tile is not None and not model.tileable:
            raise full_frame_only(model.config, f"--tile {tile} was given")

        if tile_stats not in STATS_MODES:
            raise CycleBatchError(f"unknown tile statistics '{tile_stats}' (use {' or '.join(STATS_MODES)})")
        if tile is not None and tile < 32:
            raise CycleBatchError(f"tile size {tile} is too small (at least 32 px)")
        if context < 0:
            raise CycleBatchError(f"tile context must be >= 0, not {context}")
        self.tile, self.context, self.max_memory, self.tile_stats = tile, context, max_memory, tile_stats
        self.last_plan = None  # the TilePlan the latest tiled image ran with (after any out-of-memory retry)
        self.device = pick_device(device)
        self.dtype = pick_precision(precision, self.device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        # On CPU a bf16 copy of the weights runs about 2x faster than autocast, which re-casts every
        # weight on every call and converts around each InstanceNorm (measured: benchmarks/bench_run.py).
        self.weights_dtype = torch.bfloat16 if (self.dtype == torch.bfloat16 and self.device.type == "cpu") else None
        if self.weights_dtype is not None:
            self.model = copy.deepcopy(self.model).to(self.weights_dtype)  # leave the caller's model fp32
        # On CPU the trunk's 3x3 convolutions go through Winograd: F(2,3) in bf16 (F(4,3) is faster
        # still but doubles the largest bf16 error), F(4,3) in fp32 (exact to rounding). See winograd.py.
        self.winograd = None
        if self.device.type == "cpu" and not compile and self.dtype in (None, torch.bfloat16) \
                and isinstance(model, ResnetGenerator):  # issue 18: Winograd is for the ResNet trunk only
            from .winograd import use_winograd

            self.winograd = 2 if self.dtype == torch.bfloat16 else 4
            if self.model is model:
                self.model = copy.deepcopy(model)
            use_winograd(self.model, self.winograd)
        # channels_last feeds CUDA's tensor cores. On CPU it pays once InstanceNorm takes its NHWC
        # path (networks.py): head 20 vs 26 ms, tail 33 vs 43 ms at 256 px, bf16.
        self.channels_last = self.device.type in ("cuda", "cpu")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.batch_size = batch_size
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None or self.weights_dtype is not None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # ------------------------------------------------------------ tensors

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] NCHW float in, [-1, 1] NCHW float out, any H and W (reflect-padded to the model's multiple)."""
        x, (h, w) = pad_to_multiple(self.model_input(x), self.model.size_multiple)
        if self.channels_last:  # padding may hand back a plain NCHW tensor
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            y = self._forward(x)
        return y[..., :h, :w].float()

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """On the device, in the weights' dtype and memory layout: what the model's layers take."""
        x = x.to(self.device, non_blocking=True)
        if self.weights_dtype is not None:
            x = x.to(self.weights_dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    # ------------------------------------------------------------ pixels

    def to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack HxWx3 uint8/uint16 arrays into a [-1, 1] NCHW float batch on the device."""
        scale = 65535.0 if images[0].dtype == np.uint16 else 255.0
        arr = np.stack(images)  # a writable copy, whatever the decoder handed us
        t = torch.from_numpy(arr.astype(np.int32) if arr.dtype == np.uint16 else arr)
        t = t.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()  # the cast happens on the device
        return t.mul_(2.0 / scale).sub_(1.0)

    @staticmethod
    def to_pixels(y: torch.Tensor, dtype=np.uint8) -> list[np.ndarray]:
        scale = 65535.0 if dtype == np.uint16 else 255.0
        q = y.add(1.0).mul_(scale / 2.0).round_().clamp_(0, scale)
        q = q.to(torch.int32 if dtype == np.uint16 else torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [np.ascontiguousarray(a.astype(dtype, copy=False)) for a in q]

    def translate_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Translate same-size images together; outputs have the input's size and dtype."""
        if not images:
            return []
        shape, dtype = images[0].shape, images[0].dtype
        if any(im.shape != shape or im.dtype != dtype for im in images):
            raise ValueError("translate_batch needs images of one size and dtype (batch by size first)")
        if self.needs_tiling(shape[0], shape[1]):
            return [self.translate_tiled(im) for im in images]
        return self.to_pixels(self.forward(self.to_tensor(images)), dtype)

    def translate(self, image: np.ndarray) -> np.ndarray:
        return self.translate_batch([image])[0]

    # ------------------------------------------------------------ tiles

    def memory_budget(self) -> int:
        """Bytes one image's working set may take: --max-memory, else half of what is free now."""
        if self.max_memory:
            return int(self.max_memory)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.5)
        return int(available_memory() * 0.5)

    def needs_tiling(self, height: int, width: int) -> bool:
        return self.tile is not None or estimate_bytes(self.model, height, width, self.dtype) > self.memory_budget()

    def tile_plan(self, height: int, width: int):
        from .tiling import plan_tiles

        return plan_tiles(self.model, height, width, self.memory_budget(), self.dtype, tile=self.tile,
                          context=self.context, stats=self.tile_stats,
                          max_batch=16 if self.device.type == "cuda" else 1)

    def translate_tiled(self, image: np.ndarray) -> np.ndarray:
        """One image through the tiler (whatever its size); the plan used is kept in `last_plan`."""
        from .tiling import translate_tiled

        if not self.model.tileable:  # issue 18: a U-Net too large for the memory budget
            h, w = image.shape[:2]
            raise full_frame_only(self.model.config, f"a {w}x{h} image needs about "
                                  f"{estimate_bytes(self.model, h, w, self.dtype) / 2**20:.0f} MiB, over the "
                                  f"{self.memory_budget() / 2**20:.0f} MiB budget")
        out, self.last_plan = translate_tiled(self, image, self.tile_plan(image.shape[0], image.shape[1]))
        return out

    # ------------------------------------------------------------ memory

    def auto_batch_size(self, height: int, width: int) -> int:
        """Images per forward pass for this size: bounded by free memory, capped where batching stops paying."""
        if self.batch_size:
            return self.batch_size
        if self.needs_tiling(height, width):
            return 1  # tiled images go one at a time; their tiles batch inside the tiler
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(max(1, min(32, (free * 0.6) // estimate_bytes(self.model, height, width, self.dtype))))
        # CPU: one image a pass. Batches of 4 measured slower per image (bf16, 256 px: 333 vs 285 ms) and
        # cost memory; the pipeline's threads already keep the model busy.
        return 1


def estimate_bytes(model: ResnetGenerator, height: int, width: int, dtype: Optional[torch.dtype]) -> int:
    """Peak activation memory of one full-frame forward pass (a conservative model of eager PyTorch)."""
    h, w = height + (-height) % 4, width + (-width) % 4
    elem = 4 if dtype is None else 2
    ngf = model.config.ngf
    # A handful of full-resolution ngf-channel tensors are alive at the head and tail; they dominate.
    return int(6 * h * w * ngf * elem + h * w * 3 * 4 * 4)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
