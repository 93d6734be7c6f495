"""Several processes under torchrun: who this one is, the device it trains on, the process group."""

from __future__ import annotations

import os

import torch

from ..engine.device import pick_device


def rank_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; the group itself comes later
    (join_group), once the device it needs a backend for is known."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if group_initialized():  # set up by the caller: its numbering wins
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size(), local_rank
    return int(os.environ.get("RANK", "0")), world, local_rank


def rank_device(device: torch.device, world: int, local_rank: int) -> torch.device:
    """Under torchrun each rank trains on its own GPU, cuda:LOCAL_RANK, not all on the current one."""
    if device.type == "cuda" and world > 1:
        return torch.device("cuda", local_rank)
    return device


def backend_for(device: torch.device) -> str:
    """NCCL carries CUDA tensors only: `--device cpu` on a GPU machine needs gloo all the same."""
    return "nccl" if device.type == "cuda" else "gloo"


def training_device(name: str, world: int, local_rank: int) -> torch.device:
    device = rank_device(pick_device(name), world, local_rank)
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)  # before the group starts: NCCL binds to the current device
    return device


def join_group(device: torch.device, world: int) -> None:
    if world > 1 and not group_initialized():
        import torch.distributed as dist

        dist.init_process_group(backend_for(device))


def group_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def sum_across_ranks(values: torch.Tensor) -> None:
    import torch.distributed as dist

    dist.all_reduce(values)


def leave_group() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()
