"""`--isa avx2` for the CPU benchmarks: ATen, oneDNN and MKL held to AVX2 kernels (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) and fp32, the code an AVX2-only CPU runs, on this CPU's cores. It is
not an AVX2-only CPU (clock, caches and FMA throughput are this one's): a figure made so says so."""

from __future__ import annotations

import os
import subprocess
import sys

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
MARK = "CYCLEBATCH_BENCH_ISA"


def rerun_if_asked() -> None:
    """With --isa avx2 on the command line, run this script again with the caps and --precision fp32, and exit
    with its code. Call it before torch is imported: the caps are read when torch loads."""
    if "--isa" not in sys.argv or os.environ.get(MARK):
        return
    args = [a for i, a in enumerate(sys.argv) if a != "--isa" and (i == 0 or sys.argv[i - 1] != "--isa")]
    env = {**os.environ, **AVX2_ENV, MARK: "avx2"}
    sys.exit(subprocess.call([sys.executable, *args, "--precision", "fp32"], env=env))


def held() -> str:
    """' (held to AVX2: ...)' in a process rerun_if_asked started, else ''."""
    return f" (held to AVX2: {', '.join(f'{k}={v}' for k, v in AVX2_ENV.items())})" if os.environ.get(MARK) else ""
