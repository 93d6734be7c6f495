"""Native CPU kernels (native_kernels.c), built on first use with the system C compiler, loaded with ctypes.

Why not a torch C++ extension: compiling against torch's headers takes a minute and ties the build to
one torch; this plain C file builds in about a second and links only libgomp, the OpenMP runtime torch
has already loaded (same soname), so its loops share torch's threads. The library is built for this CPU
(-march=native, or AVX2 where torch runs its AVX2 kernels) and cached under the cache directory, keyed by the source, the compiler and the CPU's
flags, so a home directory shared by different machines keeps one build per kind. Without a compiler
(or with CYCLEBATCH_NATIVE=0) `kernels()` is None and winograd.py and narrow_conv.py keep their torch
ops, which give the same results to rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

SOURCE = Path(__file__).with_name("native_kernels.c")
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC"]
log = logging.getLogger("cyclebatch")


def _cpu_flags() -> str:
    from ..device import cpu_flags

    return cpu_flags()


def _target_flags() -> list[str]:
    """This CPU's instruction set, or AVX2 where torch itself was held to AVX2 (ATEN_CPU_CAPABILITY=avx2,
    which some set on AVX-512 machines; benchmarks/bench_winograd.py --isa avx2 does, to run an AVX2-only
    CPU's code): the kernels use what torch's own kernels use."""
    import torch

    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        return ["-march=x86-64-v3", "-mtune=native"]
    return ["-march=native"]


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _build(cc: str) -> Path:
    from ...models.registry import home

    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = FLAGS + _target_flags()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(flags), _cpu_flags()]).encode())
    target = home() / "native" / f"kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed: processes starting together (Ray actors, torchrun ranks)
    # never load a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], check=True, capture_output=True, text=True,
                       timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@lru_cache(maxsize=None)
def kernels() -> Optional[ctypes.CDLL]:
    """The loaded library, or None (no compiler, a failed build, or CYCLEBATCH_NATIVE=0); said once at debug level."""
    if os.environ.get("CYCLEBATCH_NATIVE", "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        log.debug("no C compiler found: Winograd transforms run in torch")
        return None
    import torch  # noqa: F401  (its libgomp must be loaded first, so the library binds to the same runtime)

    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        log.debug("native kernels unavailable (%s): Winograd transforms run in torch", detail.strip()[:300])
        return None
    p, i, l = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    for m in (2, 4):
        for dtype in ("f32", "bf16"):
            getattr(lib, f"winograd_in{m}_{dtype}").argtypes = [p, p, i, i, i, i, i, i, i, l, l, l, p, p, i, i, i]
            getattr(lib, f"winograd_out{m}_{dtype}").argtypes = [p, p, p, i, i, i, i, i, i, i, l, l, l, p, i]
    for dtype in ("f32", "bf16"):
        getattr(lib, f"norm_add_{dtype}").argtypes = [p, p, p, p, p, i, i, i, i, p, p, p, i]
    for dtype in ("f32", "bf16"):
        getattr(lib, f"channel_sums_{dtype}").argtypes = [p, p, i, l, i, i]
        getattr(lib, f"norm_relu_{dtype}").argtypes = [p, p, p, p, i, l, i, i]
        for name in (f"channel_sums_{dtype}", f"norm_relu_{dtype}"):
            getattr(lib, name).restype = None
    for name in ("narrow_conv1_f32", "narrow_conv3_f32", "narrow_conv1_bf16", "narrow_conv3_bf16"):
        getattr(lib, name).argtypes = [p, p, p, p, i, i, i, i, i, i, l, l, l, l, l, l, l, i]
        getattr(lib, name).restype = None
    return lib
