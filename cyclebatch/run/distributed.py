"""Scale-out for `run`: under torchrun each rank takes its share of the files and one summary is printed."""

from __future__ import annotations

import os
from typing import Optional

import torch


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run plainly."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def setup(device: str) -> tuple[tuple[int, int], str]:
    """Join the process group if torchrun started us; return this rank's shard and device."""
    rank, size, local = world()
    if size == 1:
        return (0, 1), device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # gloo: only small summaries travel, and it works without GPUs
    # One GPU per rank: a bare "cuda" would put every rank on cuda:0.
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
    if device.startswith("cpu") or (device == "auto" and not torch.cuda.is_available()):
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))  # share the cores, don't fight
    return (rank, size), device


def gather(obj: object) -> Optional[list]:
    """Every rank's object on rank 0 (None elsewhere); [obj] when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    rank = dist.get_rank()
    dist.destroy_process_group()
    return parts if rank == 0 else None
