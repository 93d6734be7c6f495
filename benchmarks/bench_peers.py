"""cyclebatch against the CPU engines a user would reach for next, on a real photo, in one run.

    python benchmarks/bench_peers.py [--model vintage] [--sizes 256 1024] [--rounds 5] [--busy-core] [--quick]

Engines, each timed on the same real photo (examples/photos, centre-cropped and resized), batch 1:
  cyclebatch torch   the engine's own PyTorch path at its default precision (bf16 on CPUs with native bf16)
  cyclebatch auto    Translator(backend="auto"): the faster of torch and OpenVINO on this CPU, per shape class
  openvino bf16/f32  the PyTorch module converted by openvino.convert_model, INFERENCE_PRECISION_HINT bf16 / f32
  onnxruntime fp32   the file `cyclebatch export` writes, all graph optimisations
  eager fp32         the plain PyTorch module (the fidelity reference)
Rounds are interleaved (every engine once per round), so load from other processes hits all alike; the
figure is the median round, the best beside it. PSNR is each engine's 8-bit output against eager fp32's.

Also printed: the CPU and its features, the load average, the measured fp32 and bf16 matmul peaks (2048^3,
these threads), the model's arithmetic and the torch path's limit (its arithmetic, with the trunk's
Winograd F(m,3) savings, at the measured peak of its precision) and the fraction of it reached; then
`run` end to end (translate_paths on a folder of real photos, --backend auto) against the raw engine and
against the fastest peer. --busy-core repeats the 256 px comparison while a spawned process keeps one
core busy (un-niced), in the same run. --quick: small sizes, one round (a smoke run; figures mean little).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("CI", "true")  # openvino's telemetry stays off (see backend_openvino.no_telemetry)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_export import cpu_description  # noqa: E402
from common import ROOT, model_or_random, psnr  # noqa: E402
from cyclebatch.engine.backends import openvino_available  # noqa: E402
from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.models.networks import GeneratorConfig, ResnetBlock, ResnetGenerator, init_weights  # noqa: E402
from cyclebatch.run.pipeline import RunOptions, translate_paths  # noqa: E402

PHOTO = ROOT / "examples" / "photos" / "china.jpg"


def photo(path: Path, size: int) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    s = min(im.size)
    im = im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width + s) // 2, (im.height + s) // 2))
    return np.asarray(im.resize((size, size), Image.BICUBIC))


def to_pm1(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def to_u8(y) -> np.ndarray:
    y = torch.as_tensor(np.asarray(y, dtype=np.float32))
    return ((y[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of the best of `reps` n^3 matmuls: what the cores' vector units give a large GEMM."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def conv_flops(net: ResnetGenerator, size: int) -> tuple[float, float]:
    """(all convolutions, the residual trunk's 3x3 ones) in FLOP for one size x size image, counted on a
    64 px pass and scaled by area (every convolution's work is proportional to it)."""
    counts = {"all": 0.0, "trunk": 0.0}
    trunk = {id(m) for b in net.modules() if isinstance(b, ResnetBlock) for m in b.modules()}

    def hook(m, inp, out):
        if isinstance(m, torch.nn.ConvTranspose2d):
            macs = inp[0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs = out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        counts["all"] += 2 * macs
        if id(m) in trunk:
            counts["trunk"] += 2 * macs

    hooks = [m.register_forward_hook(hook) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.inference_mode():
        net.float()(torch.zeros(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    scale = (size / 64) ** 2
    return counts["all"] * scale, counts["trunk"] * scale


def limit_ms(flops: tuple[float, float], winograd: int | None, peak: float) -> float:
    """The torch path's arithmetic at peak: Winograd F(m,3) does (m+2)^2 / (9 m^2) of the trunk's multiplies."""
    total, trunk = flops
    factor = 1.0 if not winograd else (winograd + 2) ** 2 / (9 * winograd ** 2)
    return (total - trunk + trunk * factor) / (peak * 1e9) * 1000


def fresh_calibration(t: Translator, tmp: Path) -> None:
    """auto calibrates in this run, under this run's load, not from a decision cached at another time."""
    if hasattr(t.backend, "calibrate"):
        t.backend.path = tmp / "calibration.json"


def own_threads(fn: Callable, t: Translator | None) -> Callable:
    """The torch thread count is process-wide: each engine runs with its own, the configured count or what
    its Translator's governor chose (as it would in a process of its own)."""
    from cyclebatch.engine.cpu.threads import configured_threads

    base = configured_threads()

    def run(x):
        torch.set_num_threads(t.governor.threads if t is not None and t.governor is not None else base)
        return fn(x)

    return run


def peer_engines(net, name: str, tmp: Path) -> dict[str, Callable[[torch.Tensor], object]]:
    engines: dict[str, Callable] = {}
    eager = net.float().eval()
    engines["eager fp32"] = own_threads(eager, None)
    cb = Translator(net, device="cpu", precision="auto", backend="torch", adapt_threads=True)  # as `run`
    engines[f"cyclebatch torch {cb.precision}"] = own_threads(cb.forward, cb)
    if openvino_available():
        from cyclebatch.engine.openvino import OpenVINOBackend

        for hint in ("bf16", "fp32"):
            ov = OpenVINOBackend(net, hint)
            engines[f"openvino {'f32' if hint == 'fp32' else hint} hint"] = ov.forward
        auto = Translator(net, device="cpu", precision="auto", backend="auto", adapt_threads=True)
        fresh_calibration(auto, tmp)
        engines["cyclebatch auto"] = own_threads(auto.forward, auto)
    else:
        print("# openvino not installed: its rows and cyclebatch auto are skipped (pip install 'cyclebatch[openvino]')")
    try:
        import onnxruntime as ort

        from cyclebatch.export.api import export_onnx

        path = tmp / "model.onnx"
        export_onnx(net, path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        engines["onnxruntime fp32"] = lambda x: session.run(None, {"image": ((x + 1) / 2).numpy()})[0] * 2 - 1
    except ImportError:
        print("# onnxruntime not installed: its row is skipped (pip install 'cyclebatch[onnx]')")
    return engines


def timed_rounds(engines: dict, x: torch.Tensor, rounds: int) -> tuple[dict, dict]:
    outs, times = {}, {k: [] for k in engines}
    with torch.inference_mode():
        for k, f in engines.items():  # warm-up: compiles, first allocations; its output is the one compared
            outs[k] = to_u8(f(x))
        for _ in range(rounds):
            for k, f in engines.items():
                t = time.perf_counter()
                f(x)
                times[k].append(time.perf_counter() - t)
    return outs, times


def run_end_to_end(net, size: int, n: int, tmp: Path, backend: str, tag: str = "") -> tuple[float, float, dict]:
    """(run images/s, raw engine images/s, backends used): translate_paths on n real photos, and the same
    Translator's forward on a ready tensor."""
    src = tmp / f"in{size}-{backend}{tag}"
    src.mkdir(parents=True)
    photos = sorted((ROOT / "examples" / "photos").glob("*.[jp][pn]g"))
    for i in range(n):
        Image.fromarray(photo(photos[i % len(photos)], size)).save(src / f"{i:03d}.jpg", quality=95)
    t = Translator(net, device="cpu", precision="auto", backend=backend, adapt_threads=True)
    fresh_calibration(t, tmp)
    x = to_pm1(photo(PHOTO, size))
    t.forward(x)  # warm-up (and, for auto, the calibration of this shape class if not cached)
    start = time.perf_counter()
    for _ in range(n):
        t.forward(x)
    raw = n / (time.perf_counter() - start)
    # A first run pays the one-off costs of a long run's first minute (OpenVINO compiles the batch's shape,
    # the torch path plans it): the second, timed run is the throughput of a long run.
    for attempt in ("first", "timed"):
        s = translate_paths([str(src)], tmp / f"out{size}-{backend}-{attempt}{tag}", t, RunOptions())
        assert s.translated == n and s.failed == 0, s.failures
    return s.images_per_second, raw, s.backends


def report(size: int, outs: dict, times: dict, flops, peaks: dict, cb_key: str, winograd) -> None:
    ref = outs["eager fp32"]
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"\n{size}x{size}, {len(next(iter(times.values())))} rounds, load {os.getloadavg()[0]:.2f} "
          f"(1-min average; > 2.5 means the figures are noise)")
    print(f"  {'engine':28s} {'median ms':>10s} {'best ms':>9s} {'PSNR vs eager fp32':>19s}  cyclebatch torch / it")
    for k in times:
        p = "reference" if k == "eager fp32" else f"{psnr(outs[k], ref):.1f} dB"
        print(f"  {k:28s} {med[k]:10.1f} {min(times[k]) * 1000:9.1f} {p:>19s}  {med[k] / med[cb_key]:6.2f}x")
    precision = cb_key.rsplit(" ", 1)[1]
    limit = limit_ms(flops, winograd, peaks[precision])
    print(f"  model: {flops[0] / 1e9:.1f} GFLOP per image ({flops[1] / 1e9:.1f} in the residual trunk); torch path "
          f"{precision}{f', Winograd F({winograd},3) trunk' if winograd else ''}: limit {limit:.1f} ms at the measured "
          f"{precision} peak -> reaches {limit / med[cb_key]:.0%} of it")
    peers = [k for k in times if not k.startswith(("cyclebatch", "eager"))]
    if peers:
        fastest = min(peers, key=med.get)
        best_cb = min((k for k in times if k.startswith("cyclebatch")), key=med.get)
        print(f"  fastest peer: {fastest} ({med[fastest]:.1f} ms); {best_cb} is {med[fastest] / med[best_cb]:.2f}x "
              "its speed (goal >= 1.0)")


def busy_section(net, size: int, rounds: int, tmp: Path) -> None:
    """The same comparison while another process keeps one core busy (the spawned loop is not niced)."""
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # let the governor see the load
        x = to_pm1(photo(PHOTO, size))
        engines = {}
        if openvino_available():
            from cyclebatch.engine.openvino import OpenVINOBackend

            engines["openvino bf16 hint"] = OpenVINOBackend(net, "bf16").forward
        from cyclebatch.engine.cpu.threads import configured_threads

        threads = configured_threads()  # not what a governor lowered it to in the sections before
        fixed = Translator(net, device="cpu", precision="auto", adapt_threads=False)
        adaptive = Translator(net, device="cpu", precision="auto", adapt_threads=True)

        def run_fixed(x):  # the thread count is process-wide: each engine gets its own back first
            torch.set_num_threads(threads)
            return fixed.forward(x)

        def run_adaptive(x):
            torch.set_num_threads(adaptive.governor.threads)
            return adaptive.forward(x)

        engines[f"cyclebatch torch {fixed.precision}, {threads} threads"] = run_fixed
        engines[f"cyclebatch torch {adaptive.precision}, adaptive threads"] = run_adaptive
        _, times = timed_rounds(engines, x, rounds)
        n = max(4, rounds * 2)
        e2e, raw, used = run_end_to_end(net, size, n, tmp, "auto" if openvino_available() else "torch", "-busy")
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"\n{size}x{size} with one core kept busy by another process, {rounds} rounds, "
              f"load {os.getloadavg()[0]:.2f}")
        for k, v in med.items():
            print(f"  {k:44s} {v:9.1f} ms median")
        print(f"  (adaptive: {adaptive.governor.threads} thread(s) at the end, {adaptive.governor.changes} change(s))")
        print(f"  run --backend auto end to end ({n} photos): {1000 / e2e:9.1f} ms/image, via {used}")
        if "openvino bf16 hint" in med:
            print(f"  run / openvino bf16 under the same load: {med['openvino bf16 hint'] / (1000 / e2e):.2f}x "
                  "(goal >= 0.9)")
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    finally:
        loop.kill()
        loop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vintage", help="a model name, or 'tiny' (random ngf 8, 2 blocks: for tests)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 1024],
                    help="square sides to compare at (none: only the --busy-core section)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds at 256 px (2 at 1024 px)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--busy-core", action="store_true", help="also measure at 256 px with one core kept busy")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 and 128 px, one round, few photos")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.rounds = [s for s in args.sizes if s <= 128] or ([64, 128] if args.sizes else []), 1
    torch.set_num_threads(args.threads)
    if args.model == "tiny":
        torch.manual_seed(0)
        net, name = init_weights(ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=2))).eval(), "tiny random"
    else:
        net, name = model_or_random(args.model)
    print(f"CPU: {cpu_description()}")
    print(f"model: {name}; torch {torch.__version__}, {args.threads} threads; photo {PHOTO.name}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"measured matmul peaks (2048^3, {args.threads} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s")
    probe = Translator(net, device="cpu", precision="auto")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        engines = peer_engines(net, name, tmp) if args.sizes else {}
        cb_key = next((k for k in engines if k.startswith("cyclebatch torch")), "")
        for size in args.sizes:
            rounds = args.rounds if size <= 256 else max(1 if args.quick else 2, args.rounds * 256 * 256 // (size * size))
            outs, times = timed_rounds(engines, to_pm1(photo(PHOTO, size)), rounds)
            report(size, outs, times, conv_flops(net, size), peaks, cb_key, probe.winograd)
            n = 4 if args.quick else (16 if size <= 256 else 4)
            backend = "auto" if openvino_available() else "torch"
            e2e, raw, used = run_end_to_end(net, size, n, tmp, backend)
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            peers = [k for k in med if not k.startswith(("cyclebatch", "eager"))]
            line = f"  run --backend {backend} end to end ({n} photos): {1000 / e2e:.1f} ms/image via {used}; " \
                   f"run / raw engine {e2e / raw:.2f} (goal >= 0.9)"
            if peers:
                fastest = min(peers, key=med.get)
                line += f"; run / {fastest} {med[fastest] / (1000 / e2e):.2f}x (goal >= 1.0)"
            print(line)
        if args.busy_core:
            busy_section(net, 128 if args.quick else 256, args.rounds, tmp)


if __name__ == "__main__":
    main()
