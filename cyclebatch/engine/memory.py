"""The memory model: what a pass needs (estimate_bytes) and what the machine can give (available_memory,
device_free_bytes, memory_budget). translator.py and tiling.py both plan with it, so it lives apart from both.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

BUDGET_FRACTION = 0.5  # of the free memory, when no --max-memory is given


def estimate_bytes(model, height: int, width: int, dtype: Optional[torch.dtype]) -> int:
    """Peak activation memory of one full-frame forward pass (a conservative model of eager PyTorch)."""
    h, w = height + (-height) % 4, width + (-width) % 4
    elem = 4 if dtype is None else 2
    ngf = model.config.ngf
    # A handful of full-resolution ngf-channel tensors are alive at the head and tail; they dominate.
    return int(6 * h * w * ngf * elem + h * w * 3 * 4 * 4)


def available_memory() -> int:
    """Host memory a new allocation can use without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def device_free_bytes(device: torch.device) -> int:
    """Memory a new pass can use. On CUDA what the driver reports free plus what PyTorch's caching
    allocator holds but does not use (mem_get_info counts that reserve as taken)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return available_memory()


def memory_budget(device: torch.device, max_memory: Optional[int] = None) -> int:
    """Bytes one image's working set may take: max_memory if given, else half of what is free now."""
    if max_memory:
        return int(max_memory)
    return int(device_free_bytes(device) * BUDGET_FRACTION)
