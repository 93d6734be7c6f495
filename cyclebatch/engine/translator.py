"""The translation engine: device, precision, batching and (for large images) tiling, in one place.

`run`, `video` and Python users all go through `Translator`. Pixels come in and go out as NumPy
HxWx3 arrays (uint8 or uint16); everything between is torch on the chosen device.

Per image size the engine decides once how to run it (images per pass, or tiles) and remembers what
running out of memory taught it: a failed batch is halved, a failed single image goes to the tiler.
What runs a full-frame pass is a backend (backends.py: this engine's PyTorch path, OpenVINO, or auto);
the memory model is memory.py; on CPU the torch threads follow the cores left free (engine/cpu/threads.py).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import os
import threading
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import CycleBatchError, is_out_of_memory
from ..models.networks import ResnetGenerator, full_frame_only, pad_to_multiple, with_batchnorm_mode
from .device import pick_device, pick_precision, use_channels_last
from .memory import device_free_bytes, estimate_bytes, memory_budget  # noqa: F401 (device_free_bytes: for tests)
from .passes import (ChunkListener, EngineStats, NonFiniteOutput, Pending, ShapePlan, host_pixels,  # noqa: F401
                     quantize, to_pixels)
from .teams import in_team

MAX_GPU_BATCH = 32  # past this, batching a CycleGAN buys no throughput and only costs memory

log = logging.getLogger("cyclebatch")


class Translator:
    """Runs a generator over images. Same-size images batch together; padding never crosses images."""

    def __init__(self, model: ResnetGenerator, device: str = "auto", precision: str = "auto",
                 compile: bool = False, batch_size: Optional[int] = None, *, tile: Optional[int] = None,
                 context: int = 64, max_memory: Optional[int] = None, tile_stats: str = "exact",
                 batchnorm: str = "running", notify: Optional[Callable[[str], None]] = None,
                 backend: str = "torch", adapt_threads: bool = False):
        """tile: force tiling with this tile size; otherwise images whose full-frame pass would exceed
        max_memory bytes (default: half the free memory) are tiled automatically. tile_stats "exact"
        (whole-image InstanceNorm statistics, seamless) or "per-tile" (the naive way, for comparison).
        batchnorm: "running" statistics or "per-image" ones, for BatchNorm models (networks.with_batchnorm_mode).
        notify: where one-off notes go (a precision fallback); default the "cyclebatch" logger.
        backend: what runs full-frame passes: "torch" (this engine's own path), "openvino" or "auto" (the
        faster on this CPU, per shape class; backends.py). Tiles and shared video statistics run on torch.
        adapt_threads: on CPU, run fewer torch threads while other processes keep cores busy (engine/cpu/threads.py;
        `run` turns it on). Off by default, and off where OMP_NUM_THREADS is set (the user pinned the count):
        it sets the process-wide thread count, and a changed count changes the order of floating-point sums
        (fp32 outputs then differ run to run by one level in a few pixels)."""
        from .tiling import STATS_MODES

        # BatchNorm statistics mode (a converted copy, or the model itself); U-Nets never tile.
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
        self.notify = notify or log.warning
        self.last_plan = None  # the TilePlan the latest tiled image ran with (after any out-of-memory retry)
        self._tiling = threading.Lock()
        self.device = pick_device(device)
        self.dtype = pick_precision(precision, self.device)
        self.tf32 = precision == "tf32"
        self.stats = EngineStats()
        self._plans: dict[tuple[int, int], ShapePlan] = {}
        self._noted: set[str] = set()
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.fp32_model = self.model  # non-finite reduced-precision output is re-run through this one
        # On CPU a bf16 copy of the weights runs about 2x faster than autocast, which re-casts every
        # weight on every call and converts around each InstanceNorm (measured: benchmarks/bench_run.py).
        self.weights_dtype = torch.bfloat16 if (self.dtype == torch.bfloat16 and self.device.type == "cpu") else None
        if self.weights_dtype is not None:
            self.model = copy.deepcopy(self.model).to(self.weights_dtype)  # leave the caller's model fp32
        # On CPU the trunk's 3x3 convolutions go through Winograd: F(2,3) in bf16 (F(4,3) is faster
        # still but doubles the largest bf16 error), F(4,3) in fp32 (exact to rounding). See winograd.py;
        # the last convolution, with its 3 outputs, through narrow_conv.py.
        self.winograd = None
        if self.device.type == "cpu" and not compile and self.dtype in (None, torch.bfloat16) \
                and isinstance(model, ResnetGenerator):  # Winograd is for the ResNet trunk only
            from .cpu.winograd import use_winograd

            self.winograd = 2 if self.dtype == torch.bfloat16 else 4
            if self.model is model:
                self.model = copy.deepcopy(model)
            use_winograd(self.model, self.winograd)
            from .cpu.narrow_conv import use_narrow_conv

            use_narrow_conv(self.model)
            from .cpu.norm_relu import use_norm_relu

            use_norm_relu(self.model)
        self.channels_last = use_channels_last(self.device, compile)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Static shapes: a folder has few sizes and a video one; dynamic=True would give up the
        # per-shape specialisation that makes compiling pay.
        self._forward = torch.compile(self.model, dynamic=False) if compile else self.model
        self.compiled = compile
        self.governor = None
        if adapt_threads and self.device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
            from .cpu.threads import ThreadGovernor

            self.governor = ThreadGovernor()
        from .backends import TorchBackend, make_backend

        self.torch_backend = TorchBackend(self)  # tiles, shared statistics and fp32 re-runs need the layers
        self.backend = make_backend(backend, self, model)
        self.batch_size = batch_size
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def precision(self) -> str:
        if self.dtype is None:
            return "tf32" if self.tf32 and self.device.type == "cuda" else "fp32"
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None or self.weights_dtype is not None:
            return self._fp32_maths()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def _fp32_maths(self):
        """On CUDA, fp32 means fp32: cuDNN convolutions use TF32 by default unless told not to."""
        if self.device.type != "cuda":
            yield
            return
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def adapt_threads(self) -> None:
        if self.governor is not None and not in_team():  # a team's share of the threads is fixed
            self.governor.adapt()

    def note_once(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self.notify(message)

    # ------------------------------------------------------------ tensors

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] NCHW float in, [-1, 1] NCHW float out, any H and W (reflect-padded to the model's multiple)."""
        return self.backend.forward(x).float()

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The seam other stages use (backends, video's on-device colour path, Ray actors): [-1, 1] NCHW in,
        the generator's output out, through this engine's own torch model (bf16 weights, Winograd,
        channels_last, compiled or not), padded to the model's multiple and cropped back."""
        return self._run(self.model_input(x), self._forward, self.autocast())

    def _run(self, x: torch.Tensor, net, precision_context) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.model.size_multiple)
        if self.channels_last:  # padding may hand back a plain NCHW tensor
            x = x.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.autotune(tuple(x.shape))
        with precision_context:
            y = net(x)
        return y[..., :h, :w]

    def autotune(self, shape: tuple) -> bool:
        """cuDNN autotuning costs seconds and workspace per new shape: worth it only for shapes that
        repeat (a video, a folder's common size), so a shape is tuned from its second pass on."""
        counts = self.__dict__.setdefault("_shape_passes", collections.Counter())
        counts[shape] += 1
        return counts[shape] >= 2

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """On the device, in the weights' dtype and memory layout: what the model's layers take."""
        x = x.to(self.device, non_blocking=True)
        if self.weights_dtype is not None:
            x = x.to(self.weights_dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    # ------------------------------------------------------------ pixels

    def to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack HxWx3 uint8/uint16 arrays into a [-1, 1] NCHW float batch on the device.

        Pixels travel in their own width (16-bit as int16, not int32) from pinned memory on a side
        stream, so the upload of one batch overlaps the model's work on the one before."""
        arr = np.stack(images)  # a writable copy, whatever the decoder handed us
        sixteen = arr.dtype == np.uint16
        if sixteen:  # int16 is the 16-bit type every backend casts: store u - 32768 (the top bit flipped)
            arr = np.bitwise_xor(arr, np.uint16(0x8000), out=arr).view(np.int16)
        t = torch.from_numpy(arr)
        if self._copy_stream is not None:
            t = t.pin_memory()
            with torch.cuda.stream(self._copy_stream):
                t = t.to(self.device, non_blocking=True)
            torch.cuda.current_stream(self.device).wait_stream(self._copy_stream)
            t.record_stream(torch.cuda.current_stream(self.device))
        else:
            t = t.to(self.device)
        t = t.permute(0, 3, 1, 2).float()  # the cast happens on the device
        if sixteen:
            return t.add_(32768.0).mul_(2.0 / 65535.0).sub_(1.0)
        return t.mul_(2.0 / 255.0).sub_(1.0)

    # the pixel conversions (passes.py), as methods too: video's device path calls them on a translator
    quantize = staticmethod(quantize)
    host_pixels = staticmethod(host_pixels)
    to_pixels = staticmethod(to_pixels)

    # ------------------------------------------------------------ batches

    def plan_for(self, height: int, width: int) -> ShapePlan:
        plan = self._plans.get((height, width))
        if plan is None:
            budget = self.memory_budget()
            need = estimate_bytes(self.model, height, width, self.dtype)
            tiled = self.tile is not None or need > budget
            if tiled:
                batch = 1  # tiled images go one at a time; their tiles batch inside the tiler
            elif self.batch_size:
                batch = self.batch_size
            elif self.device.type == "cuda":
                batch = int(max(1, min(MAX_GPU_BATCH, budget * 1.2 // need)))
            else:
                # CPU: one image a pass. Batches of 4 measured slower per image (bf16, 256 px: 333 vs 285 ms)
                # and cost memory; the pipeline's threads already keep the model busy.
                batch = 1
            plan = self._plans[(height, width)] = ShapePlan(batch, tiled, budget)
        return plan

    def auto_batch_size(self, height: int, width: int) -> int:
        """Images per forward pass for this size (decided once per size, lowered by out-of-memory errors)."""
        return self.plan_for(height, width).batch

    def needs_tiling(self, height: int, width: int) -> bool:
        return self.plan_for(height, width).tiled

    def translate_batch(self, images: Sequence[np.ndarray],
                        listener: Optional[ChunkListener] = None) -> list[np.ndarray]:
        """Translate same-size images together; outputs have the input's size and dtype."""
        return self.submit(images, listener).result()

    def translate(self, image: np.ndarray) -> np.ndarray:
        return self.translate_batch([image])[0]

    def submit(self, images: Sequence[np.ndarray], listener: Optional[ChunkListener] = None) -> Pending:
        """Start translating same-size images; `.result()` waits for them. On a GPU the work is queued and
        this returns at once, so the caller can prepare the next batch while the device computes."""
        if not images:
            return Pending(self, images, [])
        shape, dtype = images[0].shape, images[0].dtype
        if any(im.shape != shape or im.dtype != dtype for im in images):
            raise ValueError("translate_batch needs images of one size and dtype (batch by size first)")
        if min(shape[:2]) < self.model.min_side:
            raise CycleBatchError(f"{shape[1]}x{shape[0]} is too small for this model: each side must be at least "
                                  f"{self.model.min_side} px")

        def tiled(rest: Sequence[np.ndarray]) -> tuple:
            outs = []
            for im in rest:
                if listener is not None:
                    listener.begin([im])
                outs.append(self.translate_tiled(im))
            return ("done", outs)

        launch = self._launch
        if listener is not None:  # settle each pass (and any fp32 re-run) before the listener hears of the next
            def launch(chunk):  # the listener hooks the torch model's norms: it runs there
                return ("done", self._collect(chunk, [self._launch(chunk, self.torch_backend, " (shared statistics)")]))
        parts = self.run_passes(images, shape[0], shape[1], launch, tiled, listener)
        return Pending(self, images, parts)

    def run_passes(self, items: Sequence, height: int, width: int, launch: Callable[[Sequence], object],
                   tiled: Callable[[Sequence], object], listener: Optional[ChunkListener] = None,
                   announce: Callable[[Sequence], Sequence[np.ndarray]] = lambda chunk: chunk) -> list:
        """The loop every batch of one size goes through: passes of the size's batch, each announced to the
        listener (as `announce(chunk)`: RGB frames); a pass that runs out of memory halves that size's batch
        for good, and one item that does not fit sends it and the rest to `tiled`. Returns the results of
        `launch` per pass (and of `tiled`, last)."""
        plan = self.plan_for(height, width)
        parts, i = [], 0
        while i < len(items):
            if plan.tiled:
                parts.append(tiled(items[i:]))
                break
            chunk = items[i:i + plan.batch]
            if listener is not None:
                listener.begin(announce(chunk))
            try:
                parts.append(launch(chunk))
                i += len(chunk)
                continue
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
            # Out of memory. Retried here, outside the handler: inside it, the traceback would keep the
            # failed pass's tensors alive.
            if listener is not None:
                listener.abort()
            self.stats.out_of_memory += 1
            self.release_memory()
            if len(chunk) > 1:
                plan.batch = max(1, len(chunk) // 2)
            else:
                plan.tiled = True
                self.note_once(f"tile{(height, width)}", f"out of memory on a full {width}x{height} frame: "
                                                         "images of that size go through in tiles")
        return parts

    @torch.inference_mode()
    def _launch(self, chunk: Sequence[np.ndarray], backend=None, why: str = "") -> tuple:
        backend = backend or self.backend
        y = backend.forward(self.to_tensor(chunk))
        q, finite = self.quantize(y, chunk[0].dtype)
        self.stats.batch_sizes[len(chunk)] += 1
        self.stats.backends[backend.name + why] += len(chunk)
        if self._copy_stream is None:
            return ("host", chunk, q, finite, None)
        # Copies into pinned memory, queued behind the model: nothing here waits for the GPU.
        q_host = torch.empty(q.shape, dtype=q.dtype, pin_memory=True)
        f_host = torch.empty(finite.shape, dtype=finite.dtype, pin_memory=True)
        q_host.copy_(q, non_blocking=True)
        f_host.copy_(finite, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return ("host", chunk, q_host, f_host, done)

    def _collect(self, images: Sequence[np.ndarray], parts: list) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for part in parts:
            if part[0] == "done":
                out += part[1]
                continue
            _, chunk, q, finite, done = part
            if done is not None:
                done.synchronize()
            if not bool(finite.all()):
                out += self._rerun_fp32(chunk)
                continue
            out += self.host_pixels(q, chunk[0].dtype)
        return out

    @torch.inference_mode()
    def _rerun_fp32(self, chunk: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Reduced precision overflowed (fp16 past 65504, say): run the batch again in fp32, say so once.
        Non-finite output in fp32 means the model itself is broken: those files fail."""
        if self.dtype is None:
            raise NonFiniteOutput(len(chunk))
        self.stats.wider_precision_reruns += 1
        self.note_once("fp32", f"{self.precision} gave non-finite values on some images; those are re-run in fp32")
        x = self.to_tensor(chunk)
        if self.fp32_model is not self.model or not self.channels_last:
            x = x.contiguous()
        else:
            x = x.contiguous(memory_format=torch.channels_last)
        x, (h, w) = pad_to_multiple(x, self.fp32_model.size_multiple)
        with self._fp32_maths():
            y = self.fp32_model(x)[..., :h, :w]
        return self.to_pixels(y, chunk[0].dtype)

    def release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------ tiles

    def memory_budget(self) -> int:
        """Bytes one image's working set may take: --max-memory, else half of what is free now."""
        return memory_budget(self.device, self.max_memory)

    def tile_plan(self, height: int, width: int):
        from .tiling import plan_tiles

        shape_plan = self.plan_for(height, width)
        if shape_plan.tile_plan is None:
            shape_plan.tile_plan = plan_tiles(self.model, height, width, shape_plan.budget, self.dtype,
                                              tile=self.tile, context=self.context, stats=self.tile_stats,
                                              max_batch=16 if self.device.type == "cuda" else 1)
        return shape_plan.tile_plan

    def translate_tiled(self, image: np.ndarray) -> np.ndarray:
        """One image through the tiler (whatever its size); the plan used is kept in `last_plan` and, for
        later images of this size, in the size's plan (so an out-of-memory retry is not repeated)."""
        from .tiling import translate_tiled

        h, w = image.shape[:2]
        if not self.model.tileable:  # a U-Net sees the whole image at once: tiles would show
            raise full_frame_only(self.model.config, f"a {w}x{h} image needs about "
                                  f"{estimate_bytes(self.model, h, w, self.dtype) / 2**20:.0f} MiB, over the "
                                  f"{self.plan_for(h, w).budget / 2**20:.0f} MiB budget")
        self.adapt_threads()
        with self._tiling:  # the tiler hooks the model's own norms: one tiled image at a time
            out, self.last_plan = translate_tiled(self, image, self.tile_plan(h, w))
        self.plan_for(h, w).tile_plan = self.last_plan
        self.stats.tiled_images += 1
        self.stats.backends[f"{self.torch_backend.name} (tiled)"] += 1
        return out
