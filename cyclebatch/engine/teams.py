"""Two model passes at once on a CPU: `teams(translator)` says how many, `team_pool(n)` runs them.

One team of N OpenMP threads meets at a barrier in every layer; when anything else takes one of its cores (a
decoder, the video stabiliser, an encoder) the others spin there, and a small model's short layers spend much
of their time at barriers anyway. Two passes at once, each on its own half of the threads, never wait for each
other. Measured on a 2-core Xeon (bf16): a distilled student at 512 px 29.4 -> 34.2 images/s, the vintage
teacher 4.69 -> 4.62 (its long layers keep both threads busy); `video` with the flow stabiliser at 640x480,
student 10.7 -> 14.2 frames/s, teacher 2.38 -> 2.74.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch


def teams(translator, sequential: bool = False) -> int:
    """Passes to run at once: 2 on a CPU with 2 or more torch threads, else 1. `sequential`: the passes must
    run in order (shared statistics carry from frame to frame). A compiled model and a GPU keep one queue (the
    GPU overlaps on its own), and so do other backends than torch (OpenVINO keeps one infer request per shape
    and its own threads)."""
    device = getattr(getattr(translator, "device", None), "type", None)
    if sequential or device != "cpu" or getattr(translator, "compiled", False) or torch.get_num_threads() < 2:
        return 1
    if not hasattr(translator, "plan_for"):  # a stand-in without the engine's plans: `fits` cannot tell
        return 1
    from .backends import TorchBackend

    backend = getattr(translator, "backend", None)
    if backend is not None and not isinstance(backend, TorchBackend):
        return 1
    return 2


def fits(translator, height: int, width: int, n: int) -> bool:
    """Whether n passes of this size may run at once: not tiled (the tiler hooks the model's own norms, one
    image at a time) and n passes within the memory one pass may take (a CPU has no out-of-memory error to
    recover from, only the kernel's OOM killer)."""
    from .memory import estimate_bytes

    plan = translator.plan_for(height, width)
    if plan.tiled:
        return False
    return n * plan.batch * estimate_bytes(translator.model, height, width, translator.dtype) <= plan.budget


def team_pool(n: int, name: str = "cyclebatch-model") -> ThreadPoolExecutor:
    """n threads, each running torch on its share of the caller's torch threads."""
    return ThreadPoolExecutor(n, name, initializer=_join, initargs=(max(1, torch.get_num_threads() // n),))


_local = threading.local()


def in_team() -> bool:
    """Whether this thread is one of a team pool's: its thread count is the team's share, which the thread
    governor (engine/cpu/threads.py) must not raise again."""
    return getattr(_local, "team", False)


def _join(threads: int) -> None:
    _local.team = True
    torch.set_num_threads(threads)  # this thread's OpenMP team only
