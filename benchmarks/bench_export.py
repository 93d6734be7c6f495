"""Every export format and variant on one model: file size, fidelity and CPU speed, beside cyclebatch itself.

    python benchmarks/bench_export.py [--model vintage] [--size 256] [--rounds 5] [--threads 2] [--dir DIR]

For each of onnx fp32/fp16 (ONNX Runtime), torchscript (LibTorch), openvino fp32/fp16 (OpenVINO CPU, f32
inference precision, plus the fp32 IR at OpenVINO's default precision on this CPU), tflite fp32/fp16/int8
dynamic-range/int8 calibrated (LiteRT interpreter with XNNPACK): the file `cyclebatch export` writes, its
size, its PSNR against PyTorch fp32 on a real photo (examples/photos/chelsea.png fitted to --size; peak 1,
the same as on 8-bit pixels), and ms per image at --size in its own runtime, batch 1, --threads threads.
Beside them: PyTorch fp32 eager and cyclebatch's Translator at its default precision (bf16 on CPUs with
native bf16). Rounds are interleaved so that load from other processes hits all engines alike; the figure
is the best round, the median beside it. Needs the onnx, tflite and openvino extras; a missing one skips
its rows. With --dir, the files are kept there, and files already there are reused (not re-exported: the
exports take most of the run's time).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, model_or_random  # noqa: E402
from cyclebatch.export import api as ex  # noqa: E402
from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.errors import CycleBatchError  # noqa: E402


def cpu_description() -> str:
    """The CPU's name and the vector features that decide which kernels run."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("unknown CPU", "x86_64", ""):
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    wanted = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX512-VNNI"),
              ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8")]
    have = [label for flag, label in wanted if flag in flags]
    lack = [label for flag, label in wanted if flag not in flags]
    return (f"{name}, {os.cpu_count()} logical cores; has {', '.join(have) or 'none of those listed'}"
            f"{'; lacks ' + ', '.join(lack) if lack else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vintage")
    ap.add_argument("--size", type=int, default=256, help="square side of the timed and compared image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, help="keep the files here; reuse those already here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    net, name = model_or_random(args.model)
    size = args.size
    image, desc = ex.sample_image(size, size)  # NHWC [0, 1]
    nchw = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    with torch.inference_mode():
        reference = ex._prepared(net, fp16=False)(torch.from_numpy(nchw)).numpy()

    fp32 = Translator(net, device="cpu", precision="fp32")
    default = Translator(net, device="cpu", precision="auto")
    x_pm1 = torch.from_numpy(nchw) * 2 - 1
    engines: dict[str, tuple[Callable[[], np.ndarray], float]] = {  # name -> (run, bytes)
        "pytorch fp32 eager": (lambda: (fp32.forward(x_pm1).float().numpy() + 1) / 2, 0),
        f"cyclebatch Translator ({default.precision})": (
            lambda: (default.forward(x_pm1).float().numpy() + 1) / 2, 0),
    }
    notes: list[str] = []
    tmp = args.dir or Path(tempfile.mkdtemp(prefix="bench_export-"))
    tmp.mkdir(parents=True, exist_ok=True)

    def add(label: str, out: Path, make_runner: Callable[[Path], Callable[[], np.ndarray]], **kw) -> None:
        t = time.perf_counter()
        if args.dir and out.is_file():
            files = [out, out.with_suffix(".bin")] if out.suffix == ".xml" else [out]
            engines[label] = (make_runner(out), sum(f.stat().st_size for f in files))
            notes.append(f"{label}: reused {out}")
            return
        try:
            r = ex.export(net, out, source=name, **kw)
        except CycleBatchError as e:
            notes.append(f"{label}: {e}")
            return
        engines[label] = (make_runner(out), r.bytes)
        notes.append(f"{label}: exported and verified in {time.perf_counter() - t:.0f} s "
                     f"({r.runtime} on {r.sample}: PSNR {r.psnr:.1f} dB)")

    # ONNX Runtime
    try:
        import onnxruntime as ort

        def ort_runner(path: Path) -> Callable[[], np.ndarray]:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            return lambda: session.run(None, {"image": nchw})[0]

        add("onnx fp32 (ONNX Runtime)", tmp / "m.onnx", ort_runner)
        add("onnx fp16 (ONNX Runtime)", tmp / "m16.onnx", ort_runner, precision="fp16")
    except ImportError:
        notes.append("onnx: skipped, pip install 'cyclebatch[onnx]'")

    # TorchScript
    def ts_runner(path: Path) -> Callable[[], np.ndarray]:
        module = torch.jit.load(str(path), map_location="cpu")
        x = torch.from_numpy(nchw)

        def run() -> np.ndarray:
            with torch.inference_mode():
                return module(x).numpy()
        return run

    add("torchscript fp32 (LibTorch)", tmp / "m.pt", ts_runner)

    # OpenVINO, before anything imports JAX (the TFLite converter): its converter forks a process.
    try:
        import openvino  # noqa: F401

        from cyclebatch.export import openvino as export_openvino

        def ov_runner(hint: str) -> Callable[[Path], Callable[[], np.ndarray]]:
            def make(path: Path) -> Callable[[], np.ndarray]:
                compiled = export_openvino.compile_model(path, hint, threads=args.threads)
                return lambda: np.asarray(compiled(nchw)[0])
            return make

        add("openvino fp32 (OpenVINO, f32)", tmp / "m.xml", ov_runner("f32"))
        add("openvino fp16 (OpenVINO, f32)", tmp / "m16.xml", ov_runner("f32"), precision="fp16")
        if "openvino fp32 (OpenVINO, f32)" in engines:
            engines["openvino fp32 (OpenVINO, bf16)"] = (ov_runner("bf16")(tmp / "m.xml"),
                                                         engines["openvino fp32 (OpenVINO, f32)"][1])
    except ImportError:
        notes.append("openvino: skipped, pip install 'cyclebatch[openvino]'")

    # LiteRT
    try:
        from cyclebatch.export import tflite as export_tflite

        export_tflite._require_converter()

        def tfl_runner(path: Path) -> Callable[[], np.ndarray]:
            runner = export_tflite.interpreter(path, threads=args.threads).get_signature_runner()
            return lambda: runner(image=image)["translated"].transpose(0, 3, 1, 2)

        calib = tmp / "calibration"
        calib.mkdir(exist_ok=True)
        for p in sorted((ROOT / "examples" / "photos").iterdir()):
            if p.suffix in (".png", ".jpg") and p.name != ex.SAMPLE_PHOTO.name and not (calib / p.name).exists():
                (calib / p.name).symlink_to(p)
        add("tflite fp32 (LiteRT)", tmp / "m.tflite", tfl_runner, size=(size, size))
        add("tflite fp16 (LiteRT)", tmp / "m16.tflite", tfl_runner, size=(size, size), precision="fp16")
        add("tflite int8 dynamic-range (LiteRT)", tmp / "m8.tflite", tfl_runner, size=(size, size),
            quantize="int8")
        add("tflite int8 calibrated (LiteRT)", tmp / "m8c.tflite", tfl_runner, size=(size, size),
            quantize="int8", calibrate=calib)
    except CycleBatchError as e:
        notes.append(f"tflite: skipped, {e}")

    print(f"model: {name} ({net.config.name}, ngf {net.config.ngf}); torch {torch.__version__}; "
          f"{args.threads} threads")
    print(f"CPU: {cpu_description()}")
    print(f"photo: {desc}; cyclebatch's default precision on this CPU: {default.precision}")
    for n in notes:
        print(f"  {n}")

    outs, times = {}, {k: [] for k in engines}
    for k, (run, _) in engines.items():  # warm-up, and the output compared
        outs[k] = np.asarray(run(), dtype=np.float64)
    for _ in range(args.rounds):
        for k, (run, _) in engines.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    base = min(times[f"cyclebatch Translator ({default.precision})"])
    print(f"\n{size}x{size}, batch 1, {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print("| engine | file MB | PSNR vs PyTorch fp32 (dB) | ms/image best | median | speed vs Translator |")
    print("|---|---|---|---|---|---|")
    for k, (_, nbytes) in engines.items():
        p = ex.psnr(outs[k], reference)
        size_mb = f"{nbytes / 1e6:.1f}" if nbytes else "-"
        best, med = 1000 * min(times[k]), 1000 * statistics.median(times[k])
        print(f"| {k} | {size_mb} | {p:.1f} | {best:.0f} | {med:.0f} | {base * 1000 / best:.2f} |")


if __name__ == "__main__":
    main()
