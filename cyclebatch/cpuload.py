"""Torch threads that follow the cores other processes leave free.

PyTorch's OpenMP threads meet at a barrier after every operator: when another process keeps one of
two cores busy, the thread that shares that core is descheduled for whole time slices and the other
one waits for it at every barrier. Measured on a tiny case: 650 ms an image with 2 threads against
20 ms with 1. `ThreadGovernor` reads, between passes, how much CPU time other processes took
(/proc/stat minus this process's own, /proc/self/stat) and runs as many threads as cores are left,
never more than the count it started with. Time of niced processes (other engineers' test runs, batch
jobs at nice 19) is not counted: the scheduler gives their core back to us at once.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import torch

INTERVAL_S = 0.5  # the load is re-read at most this often
BUSY_CORE = 0.6  # another process using more than this much of a core takes that core


def _jiffies() -> Optional[tuple[int, int]]:
    """(non-nice busy time of all CPUs, this process's CPU time), in clock ticks."""
    try:
        with open("/proc/stat") as f:
            cpu = f.readline().split()
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    user, _nice, system, _idle, _iowait, irq, softirq = (int(v) for v in cpu[1:8])
    steal = int(cpu[8]) if len(cpu) > 8 else 0
    own = int(fields[11]) + int(fields[12])  # utime, stime
    return user + system + irq + softirq + steal, own


class ThreadGovernor:
    def __init__(self, threads: Optional[int] = None, cores: Optional[int] = None,
                 sample: Callable[[], Optional[tuple[int, int]]] = _jiffies, clock=time.monotonic):
        self.max_threads = threads or torch.get_num_threads()
        self.cores = cores or os.cpu_count() or 1
        self.sample, self.clock = sample, clock
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.threads = self.max_threads
        self.changes = 0
        self._last = (clock(), sample())

    def others_busy(self) -> Optional[float]:
        """Cores' worth of CPU other processes used since the last reading (None: not yet due, or unknown)."""
        now = self.clock()
        then, before = self._last
        if now - then < INTERVAL_S:
            return None
        after = self.sample()
        self._last = (now, after)
        if before is None or after is None:
            return None
        return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / self.hz / (now - then))

    def wanted(self, busy: float) -> int:
        taken = int(busy + (1 - BUSY_CORE))  # 0.6 of a core counts as the core
        return max(1, min(self.max_threads, self.cores - taken))

    def adapt(self) -> int:
        busy = self.others_busy()
        if busy is not None:
            n = self.wanted(busy)
            if n != self.threads:
                self.threads = n
                self.changes += 1
                torch.set_num_threads(n)
        return self.threads
