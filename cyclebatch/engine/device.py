"""Where and in what precision passes run: the device, the precision `auto` picks, the memory layout, and
what the CPU can do (read from /proc/cpuinfo here and nowhere else)."""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ..errors import CycleBatchError

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields of /proc/cpuinfo ('flags', 'model name', ...); empty where there is none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough: they are alike
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> str:
    """The CPU's feature flags, space-separated ('' where unknown)."""
    return _cpuinfo().get("flags", "")


def cpu_model_name() -> str:
    return _cpuinfo().get("model name", "")


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
    """AVX512-BF16 or AMX: bf16 matmuls run at about twice fp32 speed (measured on CPU, 2 cores: 340-370 ms
    against 630-750 ms per 256 px image, eager)."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags().split()))


def pick_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32 (tf32 is fp32 storage with TF32 tensor-core maths on CUDA)."""
    if name not in PRECISIONS:
        raise CycleBatchError(f"unknown precision '{name}' (use one of {', '.join(PRECISIONS)})")
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    return {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def use_channels_last(device: torch.device, compiled: bool) -> bool:
    """CPU: InstanceNorm has an NHWC path there (networks.py), head and tail measured faster. CUDA: eager
    InstanceNorm and reflection padding hand back NCHW, so channels_last would convert at every layer;
    only a compiled graph, whose kernels inductor generates for the layout, keeps it end to end."""
    return device.type == "cpu" or (device.type == "cuda" and compiled)


