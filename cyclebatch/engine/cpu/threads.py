"""Torch threads that follow the cores other processes leave free.

PyTorch's OpenMP threads meet at a barrier after every operator: when another process keeps one of
two cores busy, the thread that shares that core is descheduled for whole time slices and the other
one waits for it at every barrier. Measured on a tiny case: 650 ms an image with 2 threads against
20 ms with 1. `ThreadGovernor` reads, between passes, how much CPU time other processes took
(/proc/stat minus this process's own, /proc/self/stat) and runs as many threads as cores are left,
never more than the count it started with. Time of niced processes counts only where the kernel groups
processes by session (sched_autogroup, the default on desktop and many server kernels): there a nice-19
job in another terminal competes for a core as its session's whole share,
the same as an un-niced one; without autogroup the scheduler hands its core back to us at once.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

import torch

INTERVAL_S = 0.5  # the load is re-read at most this often
BUSY_CORE = 0.6  # another process using more than this much of a core takes that core


def _autogroup() -> bool:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


NICE_COMPETES = _autogroup()


def _jiffies() -> Optional[tuple[int, int]]:
    """(busy time of all CPUs that competes with us, this process's CPU time and its children's), in clock ticks."""
    try:
        with open("/proc/stat") as f:
            cpu = f.readline().split()
        with open("/proc/self/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in cpu[1:8])
    steal = int(cpu[8]) if len(cpu) > 8 else 0
    # utime, stime and the reaped children's cutime, cstime: a compiler or encoder we ran is our own work
    # (the native kernels' first build once took a `run` down to one thread, changing its fp32 rounding).
    own = sum(int(v) for v in fields[11:15])
    return user + system + irq + softirq + steal + (nice if NICE_COMPETES else 0), own


# The process-wide thread count is one setting: what the user configured, and what a governor last set it
# to. A governor made while another has lowered it starts from the configured count, not the lowered one.
_configured: Optional[int] = None
_set_by_governor: Optional[int] = None


def configured_threads() -> int:
    current = torch.get_num_threads()
    return _configured if (_set_by_governor == current and _configured) else current


class ThreadGovernor:
    def __init__(self, threads: Optional[int] = None, cores: Optional[int] = None,
                 sample: Callable[[], Optional[tuple[int, int]]] = _jiffies, clock=time.monotonic):
        self.max_threads = threads or configured_threads()
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
                global _configured, _set_by_governor
                _configured = configured_threads() if _set_by_governor is None else _configured
                torch.set_num_threads(n)
                _set_by_governor = n
        return self.threads
