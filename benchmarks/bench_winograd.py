"""Where a CPU forward pass spends its time, and the native C kernels against the torch ops they replace.

    python benchmarks/bench_winograd.py [--model vintage] [--sizes 256 1024] [--precision auto] [--rounds 5]
    python benchmarks/bench_winograd.py --isa avx2      # AVX2 code paths only (an AVX2-only CPU's kernels)

For each size, on a real photo, one generator pass (the engine's model, batch 1) is timed with the
native kernels (native.py: each residual block fused around its two batched matmuls, the 3-channel
last convolution) and with the torch ops they replace (the block's layers one by one with Kronecker-matmul
tile transforms, oneDNN's convolution), alternating every round; the figure is the median round.
Printed: the time per part of the network (head and tail convolutions and norms, the trunk's batched
matmuls, the rest of the trunk), the native/torch speed-up, and the fraction of the limit reached
(the network's arithmetic with the trunk's Winograd savings at the measured matmul peak of the run's
precision, as bench_peers.py defines it).

--isa avx2 re-runs this script with ATen, oneDNN and MKL held to AVX2 kernels (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) and fp32: the code an AVX2-only CPU runs, on this CPU's
cores. It is not an AVX2-only CPU (clock, caches and FMA throughput are this one's), so the fraction
of the limit, measured against the peak under the same restriction, is the figure to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from isa import held, rerun_if_asked  # noqa: E402

if __name__ == "__main__":
    rerun_if_asked()

import torch  # noqa: E402

from bench_export import cpu_description  # noqa: E402
from bench_peers import PHOTO, conv_flops, limit_ms, matmul_peak, photo, to_pm1  # noqa: E402
from common import model_or_random  # noqa: E402
from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.engine.cpu.narrow_conv import NarrowConv  # noqa: E402
from cyclebatch.models.networks import ResnetBlock  # noqa: E402
from cyclebatch.engine.cpu.winograd import WinogradConv3x3  # noqa: E402


def parts(model) -> dict:
    """Module -> the part of the network it belongs to (leaf modules of the generator's Sequential)."""
    layers = list(model.model)
    first = next(i for i, m in enumerate(layers) if isinstance(m, ResnetBlock))
    last = max(i for i, m in enumerate(layers) if isinstance(m, ResnetBlock))
    out = {}
    for i, m in enumerate(layers):
        if isinstance(m, ResnetBlock):
            out[m] = "trunk less its matmuls"  # transforms, norms, pads, adds (fused or not)
        else:
            side = "head" if i < first else "tail"
            conv = isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, NarrowConv))
            out[m] = f"{side} conv" if conv or i > last and isinstance(m, torch.nn.Tanh) else f"{side} norm/relu/pad"
    return out


class PartClock:
    """Wall time per part, from forward pre-hooks and hooks (CPU ops are synchronous); the trunk's
    batched matmuls (winograd.py calls torch.bmm) are timed on their own and taken out of their conv."""

    def __init__(self, model):
        self.times, self.handles, self.started = defaultdict(float), [], {}
        self.bmm = torch.bmm

        def timed_bmm(*a, **kw):
            s = time.perf_counter()
            out = self.bmm(*a, **kw)
            self.times["trunk batched matmul"] += time.perf_counter() - s
            self.times["trunk less its matmuls"] -= time.perf_counter() - s
            return out

        torch.bmm = timed_bmm
        for module, part in parts(model).items():
            self.handles.append(module.register_forward_pre_hook(lambda m, i: self.started.__setitem__(m, time.perf_counter())))
            self.handles.append(module.register_forward_hook(
                lambda m, i, o, part=part: self.times.__setitem__(part, self.times[part] + time.perf_counter() - self.started[m])))

    def remove(self):
        torch.bmm = self.bmm
        for h in self.handles:
            h.remove()


def set_native(model, on: bool) -> None:
    """The C kernels (native.py) on, or the torch ops they replace."""
    for m in model.modules():
        if isinstance(m, (WinogradConv3x3, NarrowConv)):
            if on:
                m.__dict__.pop("_native", None)
            else:
                m._native = lambda *a: None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vintage")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", choices=["avx2"], help="hold ATen, oneDNN and MKL to these kernels (see above)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from cyclebatch.engine.cpu.native import kernels

    net, name = model_or_random(args.model)
    t = Translator(net, device="cpu", precision=args.precision, backend="torch", adapt_threads=False)
    prec = "bf16" if t.dtype == torch.bfloat16 else "fp32"
    print(f"CPU: {cpu_description()}")
    print(f"kernels: ATen {torch.backends.cpu.get_cpu_capability()}{held()}; "
          f"native transforms: {'built' if kernels() is not None else 'unavailable'}; load {os.getloadavg()[0]:.1f}")
    peak = matmul_peak(torch.bfloat16 if prec == "bf16" else torch.float32)
    print(f"model {name}, {prec}, Winograd F({t.winograd},3) trunk, {args.threads} threads; "
          f"{prec} matmul peak {peak:.0f} GFLOP/s")
    model, dtype = t.model, t.weights_dtype or torch.float32
    for size in args.sizes:
        x = to_pm1(photo(PHOTO, size)).to(dtype).contiguous(memory_format=torch.channels_last)
        clock = PartClock(model)
        rounds = defaultdict(list)
        per_part = {True: defaultdict(list), False: defaultdict(list)}
        with torch.inference_mode():
            for on in (True, False):  # warm-up both
                set_native(model, on)
                model(x)
            for _ in range(args.rounds):
                for on in (True, False):
                    set_native(model, on)
                    clock.times.clear()
                    s = time.perf_counter()
                    y = model(x)
                    rounds[on].append(time.perf_counter() - s)
                    for part, v in clock.times.items():
                        per_part[on][part].append(v)
                    rounds[f"y{on}"] = y
        clock.remove()
        set_native(model, True)
        med = {on: statistics.median(rounds[on]) * 1000 for on in (True, False)}
        diff = (rounds["yTrue"].float() - rounds["yFalse"].float()).abs().max().item()
        limit = limit_ms(conv_flops(net, size), t.winograd, peak)
        print(f"\n{size}x{size}: forward native {med[True]:.1f} ms, torch ops {med[False]:.1f} ms -> "
              f"{med[False] / med[True]:.2f}x; limit {limit:.1f} ms -> native reaches {limit / med[True]:.0%} of it, "
              f"torch ops {limit / med[False]:.0%} (outputs differ by at most {diff:.3g})")
        print(f"  {'part':<24}{'native ms':>10}{'torch ms':>10}")
        for part in sorted(per_part[True], key=lambda p: -statistics.median(per_part[True][p])):
            a, b = (statistics.median(per_part[on][part]) * 1000 for on in (True, False))
            print(f"  {part:<24}{a:>10.1f}{b:>10.1f}")
    print(f"\nload after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
