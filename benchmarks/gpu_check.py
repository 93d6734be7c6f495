"""One-shot check of cyclebatch on a GPU: speed, fidelity, memory, recovery, video and training, with targets.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out gpu_check.json [--model vintage.pth] [--budget-s 450]
    PYTHONPATH=. python3 benchmarks/gpu_check.py --device cpu --quick --out quick.json   # about a minute on CPU

Every section runs in its own try/except: a failure is recorded (with its error) and the rest still runs.
Each section prints its table as soon as it completes, and the JSON is rewritten (atomically) after every
section, so a run killed half way still leaves what it measured. Once --budget-s is spent, the remaining
sections are recorded as "skipped: time budget". A section needing a package that is not installed (PyAV
for video, Pillow for folders and training) is skipped with the reason.

Speeds are images (or frames) per second from this one process; every target is a ratio of two figures
measured in the same run. "raw" means forward passes only (input already on the device, synchronised,
warm-up passes excluded). The model defaults to a seeded random-init resnet_9blocks of the official shape
(speed does not depend on the weights); --model PATH loads a checkpoint file carried along instead.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import math
import os
import platform
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

T0 = time.perf_counter()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # `common`, also when this file is imported by the tests

from common import model_or_random, psnr  # noqa: E402
from cyclebatch.engine.translator import (Translator, estimate_bytes, is_out_of_memory,  # noqa: E402
                               pick_device, use_channels_last)
from cyclebatch.models.networks import GeneratorConfig, ResnetGenerator, init_weights  # noqa: E402

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")  # fp32 is true fp32 on CUDA (TF32 off)
CUDA_ONLY = {"tf32": "TF32 is a CUDA tensor-core mode", "fp16": "fp16 inference is measured on CUDA only"}
PHOTOS = ROOT / "examples" / "photos"
CLIP = ROOT / "examples" / "clip.mp4"

# Dense fp16 tensor-core peak with fp32 accumulate, TFLOP/s, from the vendors' datasheets (the figures
# "with sparsity" halved). More specific names first: "H100 PCIe" must not match "H100".
FP16_PEAKS = (
    ("H200 NVL", 835.0), ("H200", 989.0),
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("T4", 65.0),
    ("RTX 4090", 165.0),  # GeForce: fp32 accumulate runs at half the fp16-accumulate rate (330)
)


@dataclass
class Plan:
    """What one run measures; --quick swaps in small sizes and counts so that a CPU runs it in about a minute."""

    sizes: tuple  # (width, height): the "256 px" role, then the "1080p" role
    j_images: tuple  # J-style loop images at each size
    e2e_images: int
    e2e_rounds: int
    first_sizes: tuple  # fresh shapes for time-to-first-batch
    oom_size: tuple
    big: tuple  # the "24 MP" image
    tile: int
    video_seconds: Optional[float]  # None: whole clip
    video_size: tuple  # the clip made on the fly
    train_size: int
    train_steps: int
    train_warmup: int
    min_time: float  # seconds of timed passes per throughput figure
    compile_reserve: float  # seconds of budget a compile needs before it is started


FULL = Plan(sizes=((256, 256), (1920, 1080)), j_images=(64, 8), e2e_images=64, e2e_rounds=3,
            first_sizes=((512, 384), (800, 600), (1024, 1024), (1280, 720), (2048, 1536)),
            oom_size=(1280, 720), big=(6000, 4000), tile=1024, video_seconds=None, video_size=(1920, 1080),
            train_size=256, train_steps=20, train_warmup=2, min_time=0.5, compile_reserve=90.0)
QUICK = Plan(sizes=((64, 64), (96, 80)), j_images=(8, 4), e2e_images=8, e2e_rounds=1,
             first_sizes=((40, 40), (48, 36), (56, 56), (72, 48), (88, 64)),
             oom_size=(64, 64), big=(192, 128), tile=64, video_seconds=0.5, video_size=(96, 80),
             train_size=64, train_steps=2, train_warmup=1, min_time=0.1, compile_reserve=90.0)

SECTIONS = ("environment", "raw", "memory", "j_style", "fidelity", "end_to_end", "first_batch", "oom",
            "oom_real", "tiling", "video", "training", "compiled")


class Skip(Exception):
    """A section (or entry) that cannot run here; the message says why."""


# ---------------------------------------------------------------- small helpers

def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def label(size: tuple) -> str:
    return f"{size[0]}x{size[1]}"


def free_memory(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def measure(fn: Callable[[], object], dev: torch.device, min_time: float) -> dict:
    """Time repeated calls of fn. The first two are not counted: the first pays for compiling, cuDNN's
    heuristics and allocation, the second for the engine's cuDNN autotuning of shapes that repeat."""
    warm = []
    for _ in range(2):
        t = time.perf_counter()
        fn()
        sync(dev)
        warm.append(time.perf_counter() - t)
    peak_base = None
    if dev.type == "cuda":
        peak_base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    passes, seconds, per = 0, 0.0, warm[1]
    while passes < 2 or seconds < min_time:
        k = max(1, min(1000, math.ceil((min_time - seconds) / max(per, 1e-5))))
        t = time.perf_counter()
        for _ in range(k):
            fn()
        sync(dev)  # once per block: the host queues passes ahead, as a real run does
        dt = time.perf_counter() - t
        passes, seconds, per = passes + k, seconds + dt, dt / k
    peak = torch.cuda.max_memory_allocated(dev) - peak_base if peak_base is not None else None
    return {"first_s": warm[0], "second_s": warm[1], "passes": passes, "seconds": seconds, "peak_bytes": peak}


def set_layout(t: Translator, channels_last: bool) -> None:
    """Override the engine's memory-layout choice for a measurement (Module.to changes the model in place,
    so a compiled wrapper around it sees the change too and recompiles for it)."""
    t.channels_last = channels_last
    t.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def conv_gflop(net: ResnetGenerator, width: int, height: int) -> float:
    """GFLOP (2 x multiply-adds) of the convolutions of one image, counted with hooks on a 64x64 pass on
    the CPU and scaled by pixels (every layer's size is proportional to the input's)."""
    net = copy.deepcopy(net).float().cpu().eval()
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.ConvTranspose2d):  # each input pixel is scattered through the kernel
            x = inp[0]
            total[0] += 2 * x[0].numel() * m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += 2 * out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        net(torch.zeros(1, 3, 64, 64))
    for h in handles:
        h.remove()
    return total[0] * (width * height) / (64 * 64) / 1e9


def dense_fp16_peak(name: str) -> Optional[float]:
    for key, peak in FP16_PEAKS:
        if key.lower() in name.lower():
            return peak
    return None


def cpu_features() -> dict:
    info = {"model": platform.processor() or None, "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    flags = set()
    for line in text.splitlines():
        if line.startswith("model name") and not info.get("model_name"):
            info["model_name"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    info.update({"avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
                 "amx_bf16": "amx_bf16" in flags, "amx_tile": "amx_tile" in flags})
    return info


def package_version(name: str) -> Optional[str]:
    try:
        mod = __import__(name)
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
        return f"not importable ({type(e).__name__}: {e})"
    return str(getattr(mod, "__version__", "present"))


def require(module: str, why: str) -> None:
    """Skip the section, with the reason, when an optional package is missing."""
    try:
        __import__(module)
    except ImportError as e:
        raise Skip(f"needs {why} (import {module} failed: {e})") from None


def levels_diff(y: torch.Tensor, ref: torch.Tensor) -> dict:
    """Two [-1, 1] outputs compared in 8-bit levels."""
    a = (y.detach().float().cpu().numpy().astype(np.float64) + 1) * 127.5
    b = (ref.detach().float().cpu().numpy().astype(np.float64) + 1) * 127.5
    finite = np.isfinite(a)
    bad = int((~finite).sum())
    d = np.abs(a[finite] - b[finite])
    return {"psnr_db": psnr(a[finite], b[finite]) if d.size else None, "max_levels": float(d.max()) if d.size else None,
            "mean_levels": float(d.mean()) if d.size else None, "non_finite": bad}


def pixels_diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return {"psnr_db": psnr(a, b), "max_levels": int(d.max()), "mean_levels": float(d.mean()),
            "differing_fraction": float((d > 0).mean())}


def jsonable(obj):
    """inf as the string "inf" (JSON has no infinity), NaN as null, NumPy and Path values as plain ones."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isnan(f):
            return None
        return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}f}"
    return str(v)


class StreamTable:
    """A table printed row by row as its measurements complete, so a killed run still shows them."""

    def __init__(self, title: str, headers: list, widths: list):
        self.widths = widths
        print(f"\n{title}", flush=True)
        self.row(headers)

    def row(self, values: list) -> None:
        print("  " + "  ".join(fmt(v).ljust(w) for v, w in zip(values, self.widths)), flush=True)


def print_table(title: str, headers: list, rows: list) -> None:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    print(f"\n{title}", flush=True)
    print("  " + "  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    for r in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


# ---------------------------------------------------------------- input pictures

def real_photos() -> list[np.ndarray]:
    out = []
    for p in sorted(PHOTOS.glob("*.[jp][pn]g")):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is not None:
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


def synthetic_photo(seed: int = 0) -> np.ndarray:
    """Smooth gradients, edges and a little noise: a stand-in when examples/photos is missing."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:427, 0:640].astype(np.float32)
    img = np.stack([x / 640, y / 427, 0.5 + 0.5 * np.sin(x / 23 + y / 37)], -1) * 200 + 20
    img[100:250, 200:400] = (230, 60, 40)
    return (img + rng.normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)


def fit(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to the aspect ratio, then resize."""
    h, w = img.shape[:2]
    if w * height > h * width:
        cw = max(1, round(h * width / height))
        img = img[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = max(1, round(w * height / width))
        img = img[(h - ch) // 2:(h - ch) // 2 + ch]
    interp = cv2.INTER_AREA if img.shape[1] > width else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(img, (width, height), interpolation=interp))


def to_float(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1


# ---------------------------------------------------------------- the check

class GpuCheck:
    def __init__(self, args):
        self.args = args
        self.plan = QUICK if args.quick else FULL
        self.dev = pick_device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.out = Path(args.out)
        self.only = set(args.only.split(",")) if args.only else None
        self.notes: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        photos = real_photos()
        self.photos = photos or [synthetic_photo(k) for k in range(3)]
        self.results: dict = {}
        self.doc = {
            "script": "benchmarks/gpu_check.py", "argv": sys.argv[1:], "quick": bool(args.quick),
            "device": str(self.dev), "budget_s": args.budget_s, "finished": False,
            "inputs": "real photos from examples/photos" if photos else "synthetic pictures (examples/photos missing)",
            "sections": self.results, "targets": [], "engine_notes": self.notes,
            "plan": {k: getattr(self.plan, k) for k in self.plan.__dataclass_fields__},
        }
        self.net, self.model_info = self.load_model()
        self.doc["model"] = self.model_info
        if args.compile == "auto":
            self.compile = self.cuda
        else:
            self.compile = args.compile == "on"

    # ------------------------------------------------------------ plumbing

    def load_model(self) -> tuple[ResnetGenerator, dict]:
        a = self.args
        if a.model:
            net, used = model_or_random(a.model)  # falls back to random (note on stderr) if the file fails
            source = f"checkpoint {a.model}" if used == a.model else f"random resnet_9blocks (could not load {a.model})"
        elif a.quick:
            torch.manual_seed(0)
            net = init_weights(ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=2))).eval()
            source = "random tiny (ngf 8, 2 blocks)"
        else:
            torch.manual_seed(0)  # as benchmarks/common.py's fallback builds it
            net, source = init_weights(ResnetGenerator()).eval(), "random resnet_9blocks (official shape)"
        net = net.float().cpu().eval()
        info = {"source": source, "config": net.config.to_dict(),
                "parameters": sum(p.numel() for p in net.parameters()),
                "gflop_per_256x256": conv_gflop(net, 256, 256),
                "note": "random weights: speed is as with real ones; fidelity figures are indicative only"
                if source.startswith("random") else None}
        return net, info

    def translator(self, precision: str = "auto", **kw) -> Translator:
        # A copy per translator: on CUDA the engine moves and re-lays out the model it is given in place.
        return Translator(copy.deepcopy(self.net), device=str(self.dev), precision=precision,
                          notify=self.note, **kw)

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            print(f"  note from the engine: {msg}", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - T0

    def over_budget(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def supports(self, precision: str) -> Optional[str]:
        """None when this device runs the precision, else why not."""
        if not self.cuda and precision in CUDA_ONLY:
            return f"CUDA only ({CUDA_ONLY[precision]})"
        if self.cuda and precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16"
        return None

    def write(self) -> None:
        self.doc["elapsed_s"] = round(self.elapsed(), 2)
        try:
            self.doc["targets"] = self.targets()
        except Exception:  # noqa: BLE001 - a bug here must not cost the measurements
            self.doc["targets"] = [{"target": "all", "pass": None, "detail": "error: " + traceback.format_exc()}]
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(jsonable(self.doc), indent=1, allow_nan=False) + "\n")
        os.replace(tmp, self.out)  # atomic: a killed run never leaves half a file

    def section(self, name: str, fn: Callable[[], dict], cuda_only: Optional[str] = None) -> None:
        entry: dict = {}
        t = time.perf_counter()
        if self.only is not None and name not in self.only and name != "environment":  # the context always runs
            entry = {"status": "skipped", "reason": "not selected (--only)"}
        elif cuda_only and not self.cuda:
            entry = {"status": "skipped", "reason": f"CUDA only ({cuda_only})"}
        elif name != "environment" and self.over_budget():
            entry = {"status": "skipped", "reason": f"time budget ({self.args.budget_s:.0f} s) spent"}
        else:
            print(f"\n== {name} ({self.elapsed():.0f} s into the run) ==", flush=True)
            try:
                entry = {"status": "ok", "result": fn()}
            except Skip as e:
                entry = {"status": "skipped", "reason": str(e)}
            except ImportError as e:
                entry = {"status": "skipped", "reason": f"a module it needs is missing: {e}"}
            except Exception as e:  # noqa: BLE001 - one section's failure must not stop the others
                entry = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            try:
                free_memory(self.dev)
            except Exception as e:  # noqa: BLE001 - a broken CUDA context shows in the next section's error
                entry.setdefault("cleanup_error", f"{type(e).__name__}: {e}")
        entry["seconds"] = round(time.perf_counter() - t, 3)
        self.results[name] = entry
        if entry["status"] != "ok" and entry.get("reason") != "not selected (--only)":
            print(f"\n== {name}: {entry['status']}: {entry.get('reason') or entry.get('error')}", flush=True)
        self.write()

    def ok(self, name: str) -> Optional[dict]:
        e = self.results.get(name)
        return e["result"] if e and e["status"] == "ok" else None

    def run(self) -> None:
        try:
            self.section("environment", self.sec_environment)
            self.section("raw", self.sec_raw)
            self.section("memory", self.sec_memory, cuda_only="torch.cuda.max_memory_allocated")
            self.section("j_style", self.sec_j_style)
            self.section("fidelity", self.sec_fidelity)
            self.section("end_to_end", self.sec_end_to_end)
            self.section("first_batch", self.sec_first_batch)
            self.section("oom", self.sec_oom)
            self.section("oom_real", self.sec_oom_real, cuda_only="a real out-of-memory under a memory limit")
            self.section("tiling", self.sec_tiling)
            self.section("video", self.sec_video)
            self.section("training", self.sec_training)
            self.section("compiled", self.sec_compiled)
            self.doc["finished"] = True
            self.write()
            self.print_targets()
            print(f"\nJSON written to {self.out} ({self.elapsed():.0f} s)", flush=True)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ sections

    def sec_environment(self) -> dict:
        r = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "torch_threads": torch.get_num_threads(), "cpu": cpu_features(),
             "packages": {m: package_version(m) for m in ("av", "PIL", "cv2", "numpy", "safetensors")},
             # what a plain PyTorch program (the official test.py) runs with
             "defaults": {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                          "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                          "cudnn.benchmark": torch.backends.cudnn.benchmark}}
        rows = [["torch", r["torch"]], ["CUDA / cuDNN", f"{r['cuda']} / {r['cudnn']}"],
                ["CPU", f"{r['cpu'].get('model_name')} ({r['cpu']['cores']} cores)"],
                ["CPU AVX2 / AVX-512 / AVX512-BF16 / AMX",
                 " / ".join(fmt(r["cpu"].get(k)) for k in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))],
                ["model", f"{self.model_info['source']}, {self.model_info['parameters'] / 1e6:.2f} M parameters, "
                          f"{self.model_info['gflop_per_256x256']:.1f} GFLOP per 256x256"]]
        if self.cuda:
            p = torch.cuda.get_device_properties(self.dev)
            free, total = torch.cuda.mem_get_info(self.dev)
            r["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_bytes": p.total_memory,
                        "free_bytes_at_start": free, "multiprocessors": p.multi_processor_count}
            r["fp16_peak_table_tflops"] = dense_fp16_peak(p.name)
            r["fp16_matmul_tflops"] = self.matmul_tflops()
            rows += [["GPU", f"{p.name}, compute capability {p.major}.{p.minor}"],
                     ["GPU memory", f"{p.total_memory / 2**30:.1f} GiB ({free / 2**30:.1f} free)"],
                     ["dense fp16 peak (table)", fmt(r["fp16_peak_table_tflops"], 0) + " TFLOP/s"],
                     ["fp16 8192^3 matmul (measured)", fmt(r["fp16_matmul_tflops"], 0) + " TFLOP/s"]]
        rows += [[f"package {k}", v] for k, v in r["packages"].items()]
        print_table("environment", ["item", "value"], rows)
        return r

    def matmul_tflops(self, n: int = 8192, reps: int = 10) -> float:
        a = torch.randn(n, n, device=self.dev, dtype=torch.float16)
        b = torch.randn(n, n, device=self.dev, dtype=torch.float16)
        for _ in range(3):
            a @ b
        sync(self.dev)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(self.dev)
        return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12

    def raw_entry(self, size: tuple, precision: str, batch_kind: str, channels_last: bool,
                  compiled: bool = False) -> dict:
        w, h = size
        e = {"size": label(size), "precision": precision, "batch_kind": batch_kind, "channels_last": channels_last,
             "engine_layout": use_channels_last(self.dev, compiled) == channels_last, "compiled": compiled}
        t = self.translator(precision, compile=compiled)
        set_layout(t, channels_last)
        bs = 1 if batch_kind == "1" else t.auto_batch_size(h, w)
        e["batch_requested"], e["oom_halvings"] = bs, 0
        gen = torch.Generator().manual_seed(0)
        while True:
            x = (torch.rand(bs, 3, h, w, generator=gen) * 2 - 1).to(self.dev)
            failed = False
            try:
                m = measure(lambda: t.forward(x), self.dev, self.plan.min_time)
            except RuntimeError as exc:
                if not is_out_of_memory(exc) or bs == 1:
                    raise
                failed = True
            if not failed:
                break
            # outside the handler, so the failed pass's tensors can be freed
            del x
            free_memory(self.dev)
            bs, e["oom_halvings"] = bs // 2, e["oom_halvings"] + 1
        images = m["passes"] * bs
        e.update(status="ok", batch=bs, images_per_s=images / m["seconds"], ms_per_image=1e3 * m["seconds"] / images,
                 first_pass_s=m["first_s"], second_pass_s=m["second_s"], passes=m["passes"], seconds=m["seconds"],
                 peak_bytes_per_image=None if m["peak_bytes"] is None else m["peak_bytes"] / bs,
                 estimate_bytes=estimate_bytes(t.model, h, w, t.dtype))
        del t, x
        free_memory(self.dev)
        return e

    RAW_HEADERS = ["size", "precision", "batch", "layout", "choice", "images/s", "ms/image", "peak MiB/image", "note"]
    RAW_WIDTHS = [9, 9, 9, 6, 6, 9, 8, 14, 0]

    def raw_row(self, e: dict) -> list:
        layout = {True: "cl", False: "nchw", None: "-"}[e.get("channels_last")]
        if e.get("status") != "ok":
            return [e["size"], e["precision"], e["batch_kind"], layout, "", None, None, None,
                    f"{e.get('status')}: {e.get('reason') or e.get('error')}"]
        note = f"{e['oom_halvings']} out-of-memory halvings from {e['batch_requested']}" if e["oom_halvings"] else ""
        if e.get("compiled"):
            note = f"first pass {e['first_pass_s']:.1f} s"
            if e.get("over_eager"):
                note += f", {e['over_eager']:.2f}x eager"
        return [e["size"], e["precision"], f"{e['batch_kind']} ({e['batch']})", layout,
                "engine" if e["engine_layout"] else "", e["images_per_s"], e["ms_per_image"],
                None if e["peak_bytes_per_image"] is None else e["peak_bytes_per_image"] / 2**20, note]

    def sec_raw(self) -> dict:
        entries = []
        table = StreamTable("raw model throughput (forward passes only; warm-up excluded; cl = channels_last)",
                            self.RAW_HEADERS, self.RAW_WIDTHS)
        for size in self.plan.sizes:
            for prec in PRECISIONS:
                why = self.supports(prec)
                if why:
                    entries.append({"size": label(size), "precision": prec, "batch_kind": "all", "status": "skipped",
                                    "reason": why})
                    table.row(self.raw_row(entries[-1]))
                    continue
                auto = self.translator(prec).auto_batch_size(size[1], size[0])
                for batch_kind in ("1", "auto"):
                    for cl in (False, True):
                        base = {"size": label(size), "precision": prec, "batch_kind": batch_kind, "channels_last": cl}
                        if batch_kind == "auto" and auto == 1:
                            entries.append({**base, "status": "skipped", "reason": "the automatic batch is 1 here"})
                        elif self.over_budget():
                            entries.append({**base, "status": "skipped", "reason": "time budget"})
                        else:
                            try:
                                entries.append(self.raw_entry(size, prec, batch_kind, cl))
                            except Exception as exc:  # noqa: BLE001 - one configuration's failure is a result
                                entries.append({**base, "status": "error", "error": f"{type(exc).__name__}: {exc}"})
                                free_memory(self.dev)
                        table.row(self.raw_row(entries[-1]))
        # the engine's own layout against the other one, same size / precision / batch
        layout = []
        key = lambda e: (e["size"], e["precision"], e["batch_kind"])  # noqa: E731
        for e in entries:
            if e.get("status") == "ok" and e["engine_layout"]:
                other = next((o for o in entries if o.get("status") == "ok" and not o["engine_layout"]
                              and key(o) == key(e)), None)
                if other:
                    layout.append({"size": e["size"], "precision": e["precision"], "batch_kind": e["batch_kind"],
                                   "engine_over_other": e["images_per_s"] / other["images_per_s"]})
        print_table("the engine's layout against the other one (ratio of images/s)",
                    ["size", "precision", "batch", "engine / other"],
                    [[x["size"], x["precision"], x["batch_kind"], x["engine_over_other"]] for x in layout])
        return {"entries": entries, "layout_check": layout}

    def sec_memory(self) -> dict:
        raw = self.ok("raw")
        if raw is None:
            raise Skip("needs the raw section's measurements, which did not run")
        rows, out = [], []
        for e in raw["entries"]:
            if e.get("status") != "ok" or e.get("peak_bytes_per_image") is None:
                continue
            ratio = e["peak_bytes_per_image"] / e["estimate_bytes"]
            out.append({k: e[k] for k in ("size", "precision", "batch", "channels_last", "peak_bytes_per_image",
                                          "estimate_bytes")} | {"peak_over_estimate": ratio})
            rows.append([e["size"], e["precision"], e["batch"], "cl" if e["channels_last"] else "nchw",
                         e["peak_bytes_per_image"] / 2**20, e["estimate_bytes"] / 2**20, ratio])
        print_table("peak memory per image (max_memory_allocated, reset per measurement) against estimate_bytes",
                    ["size", "precision", "batch", "layout", "peak MiB", "estimate MiB", "peak / estimate"], rows)
        worst = max((o["peak_over_estimate"] for o in out), default=None)
        return {"entries": out, "worst_peak_over_estimate": worst}

    def sec_j_style(self) -> dict:
        """What the official test.py does per image: fp32 eager, batch 1, NCHW, a CPU->GPU->CPU round trip
        each, PyTorch's default flags (cuDNN TF32 as PyTorch ships it, no autotuning)."""
        net = copy.deepcopy(self.net).float().to(self.dev).eval()
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False  # the engine switches it per shape; test.py leaves the default
        out = []
        try:
            for size, n in zip(self.plan.sizes, self.plan.j_images):
                imgs = [fit(self.photos[i % len(self.photos)], *size) for i in range(min(n, 6))]

                def one(img: np.ndarray) -> np.ndarray:
                    x = torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1)[None].to(self.dev)
                    with torch.no_grad():
                        y = net(x)
                    return ((y[0].permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)

                one(imgs[0])
                one(imgs[0])
                t = time.perf_counter()
                for i in range(n):
                    one(imgs[i % len(imgs)])
                dt = time.perf_counter() - t
                out.append({"size": label(size), "images": n, "seconds": dt, "images_per_s": n / dt})
        finally:
            torch.backends.cudnn.benchmark = saved
        flags = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}
        rows = [[o["size"], o["images"], o["images_per_s"]] for o in out]
        best = self.engine_best(self.plan.sizes[0])
        ratio = best["images_per_s"] / out[0]["images_per_s"] if best else None
        print_table("J-style loop (fp32 eager, batch 1, per-image round trip)", ["size", "images", "images/s"], rows)
        if best:
            print(f"  engine's best raw at {label(self.plan.sizes[0])}: {best['images_per_s']:.1f} images/s "
                  f"({best['precision']}, batch {best['batch']}{', compiled' if best.get('compiled') else ''}) "
                  f"= {ratio:.1f}x the J-style loop", flush=True)
        return {"entries": out, "flags": flags, "engine_best_over_j": ratio, "engine_best": best}

    def engine_best(self, size: tuple) -> Optional[dict]:
        """The fastest raw configuration the engine runs by itself (its own layout), eager or compiled."""
        cands = []
        for sec in ("raw", "compiled"):
            r = self.ok(sec)
            if r:
                cands += [e for e in r["entries"] if e.get("status") == "ok" and e["size"] == label(size)
                          and e["engine_layout"]]
        return max(cands, key=lambda e: e["images_per_s"], default=None)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """True fp32: the plain model (no Winograd, no autocast), NCHW, TF32 off, deterministic cuDNN."""
        net = copy.deepcopy(self.net).float().to(self.dev).eval()
        flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                 torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        try:
            with torch.inference_mode():
                xp = torch.nn.functional.pad(x, (0, (-x.shape[-1]) % 4, 0, (-x.shape[-2]) % 4), mode="reflect")
                return net(xp.to(self.dev))[..., :x.shape[-2], :x.shape[-1]].float().cpu()
        finally:
            (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = flags

    def sec_fidelity(self) -> dict:
        photo = self.photos[0]
        pictures = [(f"photo {photo.shape[1]}x{photo.shape[0]}", photo),
                    (f"photo resized to {label(self.plan.sizes[1])}", fit(photo, *self.plan.sizes[1]))]
        out, rows = [], []
        for name, img in pictures:
            x = to_float(img)
            ref = self.reference(x)
            repeat = levels_diff(self.reference(x), ref)
            entries = [{"picture": name, "precision": "fp32 reference, repeated", **repeat}]
            for prec in PRECISIONS:
                why = self.supports(prec)
                if why:
                    entries.append({"picture": name, "precision": prec, "status": "skipped", "reason": why})
                    continue
                t = self.translator(prec)
                y = t.forward(x)
                entries.append({"picture": name, "precision": prec, "engine": t.precision,
                                "winograd": t.winograd, **levels_diff(y, ref)})
                del t
            for e in entries:
                rows.append([e["picture"], e["precision"], e.get("psnr_db"), e.get("max_levels"),
                             e.get("non_finite"), e.get("reason", "")])
            out += entries
        print_table("fidelity against true fp32 (levels of 8 bits)",
                    ["picture", "precision", "PSNR dB", "max diff", "non-finite", ""], rows)
        return {"entries": out}

    def write_folder(self, size: tuple, n: int, folder: Path) -> None:
        folder.mkdir(parents=True)
        for i in range(n):
            img = fit(self.photos[i % len(self.photos)], *size)
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])

    def sec_end_to_end(self) -> dict:
        require("PIL", "Pillow (cyclebatch reads and writes image files with it)")
        from cyclebatch.run.pipeline import translate_paths

        out, rows = [], []
        for size in self.plan.sizes:
            if self.over_budget():
                out.append({"size": label(size), "status": "skipped", "reason": "time budget"})
                continue
            w, h = size
            n = self.plan.e2e_images
            folder = self.tmp / f"e2e_{label(size)}"
            self.write_folder(size, n, folder)
            t = self.translator()
            bs = t.auto_batch_size(h, w)
            x = (torch.rand(bs, 3, h, w) * 2 - 1).to(self.dev)
            rounds = []
            for r in range(self.plan.e2e_rounds):
                m = measure(lambda: t.forward(x), self.dev, self.plan.min_time)  # also warms the shape for the run
                raw = m["passes"] * bs / m["seconds"]
                s = translate_paths([str(folder)], self.tmp / f"e2e_out_{label(size)}_{r}", t)
                rounds.append({"raw_images_per_s": raw, "run_images_per_s": s.images_per_second,
                               "translated": s.translated, "failed": s.failed, "run_seconds": s.seconds,
                               "ratio": s.images_per_second / raw, "failures": s.failures[:3]})
            e = {"size": label(size), "status": "ok", "images": n, "precision": t.precision, "batch": bs,
                 "rounds": rounds, "ratio": statistics.median(r["ratio"] for r in rounds),
                 "raw_images_per_s": statistics.median(r["raw_images_per_s"] for r in rounds),
                 "run_images_per_s": statistics.median(r["run_images_per_s"] for r in rounds),
                 "translated": min(r["translated"] for r in rounds), "failed": max(r["failed"] for r in rounds),
                 "batch_sizes": dict(t.stats.batch_sizes)}
            out.append(e)
            rows.append([e["size"], n, e["precision"], bs, e["raw_images_per_s"], e["run_images_per_s"], e["ratio"],
                         f"{e['translated']}/{n}", e["batch_sizes"]])
            shutil.rmtree(folder, ignore_errors=True)
            del t, x
            free_memory(self.dev)
        print_table("translate_paths end to end (JPEG in and out) against raw at the same precision and batch "
                    f"(median of {self.plan.e2e_rounds} alternating rounds)",
                    ["size", "images", "precision", "batch", "raw img/s", "run img/s", "run / raw", "translated",
                     "batch sizes used"], rows)
        return {"entries": out}

    def sec_first_batch(self) -> dict:
        t = self.translator()
        t.translate_batch([fit(self.photos[0], 32, 32)])  # process-wide first use (context, libraries) not counted
        out, rows = [], []
        for size in self.plan.first_sizes:
            if self.over_budget():
                out.append({"size": label(size), "status": "skipped", "reason": "time budget"})
                continue
            w, h = size
            bs = t.auto_batch_size(h, w)
            distinct = [fit(p, w, h) for p in self.photos[:bs]]
            imgs = [distinct[i % len(distinct)] for i in range(bs)]
            times = []
            for _ in range(3):
                s = time.perf_counter()
                res = t.translate_batch(imgs)
                times.append(time.perf_counter() - s)
            assert len(res) == bs
            e = {"size": label(size), "status": "ok", "batch": bs, "first_s": times[0], "second_s": times[1],
                 "third_s": times[2], "first_over_third": times[0] / times[2]}
            out.append(e)
            rows.append([e["size"], bs, times[0] * 1e3, times[1] * 1e3, times[2] * 1e3, e["first_over_third"]])
        print_table(f"time to first batch on fresh shapes ({t.precision}; the second pass of a shape is the one "
                    "the engine autotunes on CUDA)",
                    ["size", "batch", "first ms", "second ms", "third ms", "first / third"], rows)
        return {"entries": out, "precision": t.precision, "batch_sizes": dict(t.stats.batch_sizes)}

    def sec_oom(self) -> dict:
        """Out of memory forced by a stand-in forward that raises torch.OutOfMemoryError above a batch size
        (the same on every device); the engine must halve, settle, and hand every image back."""
        w, h = self.plan.oom_size
        n, limit = 8, 2
        imgs = [fit(self.photos[i % len(self.photos)], w, h) for i in range(n)]
        ref = self.translator(batch_size=n).translate_batch(imgs)
        out = {}
        for case, lim, batch in (("batch", limit, n), ("single image", 0, None)):
            t = self.translator(batch_size=batch)
            real_forward, calls = t.model.forward, []

            def limited(x, *a, _lim=lim, _real=real_forward, _calls=calls, **k):
                _calls.append(int(x.shape[0]))
                if x.shape[0] > _lim:
                    raise torch.OutOfMemoryError(f"out of memory (forced by gpu_check above {_lim} images)")
                return _real(x, *a, **k)

            t.model.forward = limited  # the engine runs the model by calling it; its tiler goes layer by layer
            got = t.translate_batch(imgs if case == "batch" else imgs[:1])
            want = ref if case == "batch" else ref[:1]
            back = len(got) == len(want) and all(g.shape == r.shape and g.dtype == r.dtype for g, r in zip(got, want))
            diff = pixels_diff(np.stack(got), np.stack(want)) if back else None
            out[case] = {"images_in": len(want), "images_back": len(got), "all_back": back,
                         "out_of_memory": t.stats.out_of_memory, "settled_batch": t.plan_for(h, w).batch,
                         "tiled": t.plan_for(h, w).tiled, "tiled_images": t.stats.tiled_images,
                         "batch_sizes": dict(t.stats.batch_sizes), "forward_calls": calls,
                         "identical_to_unforced": bool(diff and diff["max_levels"] == 0), "vs_unforced": diff,
                         "note": "tiled: differs from a full-frame pass by rounding" if t.stats.tiled_images else None}
        rows = [[k, f"{v['images_back']}/{v['images_in']}", v["out_of_memory"], v["settled_batch"], v["tiled_images"],
                 v["batch_sizes"], v["vs_unforced"] and v["vs_unforced"]["max_levels"]] for k, v in out.items()]
        print_table(f"forced out of memory at {w}x{h} (a stand-in forward raises above {limit} images, then above 0)",
                    ["case", "back", "OOM errors", "settled batch", "tiled", "batch sizes", "max diff vs unforced"],
                    rows)
        return out

    def sec_oom_real(self) -> dict:
        """A real CUDA out-of-memory: the allocator limited to a few images' worth of memory above what is held."""
        w, h = self.plan.sizes[1]
        n = 16
        imgs = [fit(self.photos[i % len(self.photos)], w, h) for i in range(n)]
        ref_t = self.translator()
        ref = ref_t.translate_batch(imgs)
        unforced_batch = dict(ref_t.stats.batch_sizes)
        del ref_t
        t = self.translator()
        per_image = estimate_bytes(t.model, h, w, t.dtype)
        t.auto_batch_size(h, w)  # the plan is made from the free memory before the limit, as a run would
        free_memory(self.dev)
        total = torch.cuda.get_device_properties(self.dev).total_memory
        allowed = torch.cuda.memory_reserved(self.dev) + 3 * per_image
        torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / total), self.dev)
        try:
            s = time.perf_counter()
            got = t.translate_batch(imgs)
            secs = time.perf_counter() - s
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, self.dev)
        back = len(got) == n
        diff = pixels_diff(np.stack(got), np.stack(ref)) if back else None
        r = {"size": label((w, h)), "images_in": n, "images_back": len(got), "all_back": back,
             "limit_bytes": allowed, "estimate_per_image": per_image, "out_of_memory": t.stats.out_of_memory,
             "settled_batch": t.plan_for(h, w).batch, "tiled_images": t.stats.tiled_images,
             "batch_sizes": dict(t.stats.batch_sizes), "unforced_batch_sizes": unforced_batch, "seconds": secs,
             "vs_unforced": diff}
        print_table(f"real out of memory ({t.precision}, allocator limited to {allowed / 2**30:.1f} GiB)",
                    ["size", "back", "OOM errors", "settled batch", "batch sizes", "tiled", "max diff vs unforced",
                     "s"],
                    [[r["size"], f"{len(got)}/{n}", r["out_of_memory"], r["settled_batch"], r["batch_sizes"],
                      r["tiled_images"], diff and diff["max_levels"], secs]])
        return r

    def timed_translate(self, t: Translator, img: np.ndarray) -> tuple[np.ndarray, dict]:
        runs = []
        for _ in range(2):  # the first pays for fresh shapes
            if self.cuda:
                free_memory(self.dev)
                base = torch.cuda.memory_allocated(self.dev)
                torch.cuda.reset_peak_memory_stats(self.dev)
            s = time.perf_counter()
            y = t.translate(img)
            runs.append(time.perf_counter() - s)
        peak = torch.cuda.max_memory_allocated(self.dev) - base if self.cuda else None
        return y, {"first_s": runs[0], "seconds": runs[1], "peak_bytes": peak}

    def sec_tiling(self) -> dict:
        w, h = self.plan.big
        img = fit(self.photos[0], w, h)
        tiled_t = self.translator(tile=self.plan.tile)
        y_tiled, m_tiled = self.timed_translate(tiled_t, img)
        plan = tiled_t.last_plan
        r = {"size": label((w, h)), "megapixels": w * h / 1e6, "precision": tiled_t.precision,
             "tiled": {**m_tiled, "plan": plan and {k: getattr(plan, k)
                                                    for k in ("tile", "context", "batch", "strip", "spill")}}}
        del tiled_t
        full_t = self.translator()
        if full_t.needs_tiling(h, w):
            need = estimate_bytes(full_t.model, h, w, full_t.dtype)
            r["full"] = {"status": "skipped",
                         "reason": f"a full frame needs about {need / 2**30:.1f} GiB, over the engine's budget"}
        else:
            y_full, m_full = self.timed_translate(full_t, img)
            r["full"] = {**m_full, "fell_back_to_tiles": full_t.stats.tiled_images > 0,
                         "out_of_memory": full_t.stats.out_of_memory}
            r["tiled_vs_full"] = pixels_diff(y_tiled, y_full)
        rows = [["tiled " + str(self.plan.tile), r["tiled"]["first_s"], r["tiled"]["seconds"],
                 None if r["tiled"]["peak_bytes"] is None else r["tiled"]["peak_bytes"] / 2**30]]
        if "tiled_vs_full" in r:
            rows.append(["full frame", r["full"]["first_s"], r["full"]["seconds"],
                         None if r["full"]["peak_bytes"] is None else r["full"]["peak_bytes"] / 2**30])
        print_table(f"{w}x{h} ({w * h / 1e6:.2f} MP), {r['precision']}, tiled at {self.plan.tile} against full frame",
                    ["how", "first s", "second s", "peak GiB"], rows)
        if "tiled_vs_full" in r:
            d = r["tiled_vs_full"]
            print(f"  tiled against full frame: {d['psnr_db']:.1f} dB, max {d['max_levels']} levels, "
                  f"{100 * d['differing_fraction']:.2f}% of values differ", flush=True)
        else:
            print(f"  full frame: {r['full']['reason']}", flush=True)
        return r

    def make_clip(self, src: Path, dst: Path, size: tuple, seconds: Optional[float]) -> int:
        """The example clip upscaled to `size`, encoded fast (the source's own encode is not what is timed)."""
        import av

        w, h = size
        with av.open(str(src)) as c:
            s = c.streams.video[0]
            rate = s.average_rate or 24
            frames = []
            for f in c.decode(s):
                if seconds is not None and len(frames) >= round(seconds * float(rate)):
                    break
                frames.append(cv2.resize(f.to_ndarray(format="rgb24"), (w, h), interpolation=cv2.INTER_CUBIC))
        with av.open(str(dst), "w") as c:
            s = c.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.options = {"crf": "18", "preset": "ultrafast"}
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        return len(frames)

    def sec_video(self) -> dict:
        require("av", "PyAV (video decoding and encoding)")
        import av

        from cyclebatch.video.api import translate_video

        if not CLIP.is_file():
            raise Skip(f"{CLIP} is missing")
        made = self.tmp / f"clip_{label(self.plan.video_size)}.mp4"
        n_made = self.make_clip(CLIP, made, self.plan.video_size, self.plan.video_seconds)
        clips = [("examples/clip.mp4", CLIP), (f"clip upscaled to {label(self.plan.video_size)}", made)]
        out, rows = [], []
        for name, path in clips:
            if self.over_budget():
                out.append({"clip": name, "status": "skipped", "reason": "time budget"})
                continue
            with av.open(str(path)) as c:
                s = c.streams.video[0]
                h, w = s.height, s.width
            t = self.translator()
            bs = t.auto_batch_size(h, w)
            x = (torch.rand(bs, 3, h, w) * 2 - 1).to(self.dev)
            m = measure(lambda: t.forward(x), self.dev, self.plan.min_time)  # also warms the shape
            raw = m["passes"] * bs / m["seconds"]
            # flow (the default) stabilises on the CPU beside the GPU; stats keeps frames YUV to the GPU
            for temporal in ("flow", "stats"):
                res = translate_video(path, self.tmp / f"out_{path.stem}_{temporal}.mp4", t, temporal=temporal,
                                      duration=self.plan.video_seconds if path == CLIP else None)
                fps = res.frames / res.seconds
                e = {"clip": name, "temporal": temporal, "status": "ok", "size": label((w, h)),
                     "precision": t.precision, "batch": bs, "frames": res.frames, "seconds": res.seconds,
                     "frames_per_s": fps, "raw_frames_per_s": raw, "ratio": fps / raw,
                     "batch_sizes": dict(t.stats.batch_sizes)}
                out.append(e)
                rows.append([name, temporal, e["size"], bs, res.frames, raw, fps, e["ratio"]])
            del t, x
            free_memory(self.dev)
        print_table("translate_video (decode, model, libx264 encode, audio copy) against raw frames/s",
                    ["clip", "temporal", "size", "batch", "frames", "raw fps", "video fps", "video / raw"], rows)
        return {"entries": out, "made_clip_frames": n_made}

    def sec_training(self) -> dict:
        try:
            from cyclebatch.train.config import TrainConfig
            from cyclebatch.train.trainer import Trainer
        except ImportError as e:
            raise Skip(f"the trainer cannot be imported ({type(e).__name__}: {e})") from None
        if not hasattr(Trainer, "train_step"):
            raise Skip("cyclebatch.train.trainer.Trainer has no train_step")
        data = self.tmp / "train"
        for k in range(6):
            for dom, off in (("A", 0), ("B", 3)):
                (data / dom).mkdir(parents=True, exist_ok=True)
                img = self.photos[(k + off) % len(self.photos)]
                cv2.imwrite(str(data / dom / f"{k}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        size = self.plan.train_size
        known = set(TrainConfig.__dataclass_fields__)
        out, rows = [], []
        for prec in ("fp32", "bf16", "fp16"):
            if prec == "fp16" and not self.cuda:
                out.append({"precision": prec, "status": "skipped", "reason": "CUDA only (fp16 training needs a GPU)"})
                continue
            if self.over_budget():
                out.append({"precision": prec, "status": "skipped", "reason": "time budget"})
                continue
            want = {"runs_dir": str(self.tmp / "runs"), "device": str(self.dev), "precision": prec, "workers": 0,
                    "progress": False, "crop_size": size, "load_size": size + size // 8,
                    "ngf": self.net.config.ngf, "n_blocks": self.net.config.n_blocks,
                    "ndf": 64 if not self.args.quick else 16}
            config = TrainConfig(str(data / "A"), str(data / "B"), f"gpu_check_{prec}",
                                 **{k: v for k, v in want.items() if k in known})
            quiet = {"log": lambda *a, **k: None} if "log" in inspect.signature(Trainer).parameters else {}
            trainer = Trainer(config, **quiet)
            e = self.train_steps(trainer, data, size)
            e.update(precision=prec, status="ok")
            if self.cuda:  # the trainer's fp32 leaves PyTorch's defaults: cuDNN convolutions in TF32
                e["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
            out.append(e)
            rows.append([prec, e["steps"], e["ms_per_step"], 100 * e["data_wait_share"],
                         None if e["peak_bytes"] is None else e["peak_bytes"] / 2**30])
            del trainer
            free_memory(self.dev)
        print_table(f"training steps at {size}x{size} (both generators and discriminators, batch 1; a feeder thread "
                    "decodes, resizes and crops with OpenCV)",
                    ["precision", "steps", "ms/step", "data wait %", "peak GiB"], rows)
        return {"entries": out, "size": size}

    def train_steps(self, trainer, data: Path, size: int) -> dict:
        """Timed Trainer.train_step calls; the data wait is the time the loop blocks on the next batch."""
        dev = getattr(trainer, "device", self.dev)
        cl = getattr(trainer, "channels_last", dev.type == "cuda")
        files = {d: sorted((data / d).glob("*.png")) for d in ("A", "B")}
        load = size + size // 8
        steps = self.plan.train_warmup + self.plan.train_steps
        q: "queue.Queue" = queue.Queue(maxsize=4)

        def crop(path: Path, rng) -> np.ndarray:
            img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            img = cv2.resize(img, (load, load), interpolation=cv2.INTER_CUBIC)
            y, x = rng.integers(0, load - size + 1, 2)
            img = img[y:y + size, x:x + size]
            return np.ascontiguousarray(img[:, ::-1] if rng.random() < 0.5 else img)

        def feed() -> None:
            rng = np.random.default_rng(0)
            for i in range(steps):
                a = crop(files["A"][i % len(files["A"])], rng)
                b = crop(files["B"][rng.integers(len(files["B"]))], rng)
                q.put((torch.from_numpy(a)[None], torch.from_numpy(b)[None]))

        def to_input(x: torch.Tensor) -> torch.Tensor:
            if hasattr(trainer, "to_input"):
                return trainer.to_input(x)
            x = x.to(dev).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            return x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        wait = step = 0.0
        done = 0
        for i in range(steps):
            if i == self.plan.train_warmup:
                sync(dev)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            a, b = q.get()
            real_a, real_b = to_input(a), to_input(b)
            t1 = time.perf_counter()
            trainer.train_step(real_a, real_b)
            sync(dev)  # train_step reads its losses back already; this makes the step's end certain
            t2 = time.perf_counter()
            if i >= self.plan.train_warmup:
                wait, step, done = wait + t1 - t0, step + t2 - t1, done + 1
        feeder.join()
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        return {"steps": done, "ms_per_step": 1e3 * step / done, "ms_per_iteration": 1e3 * (wait + step) / done,
                "data_wait_share": wait / (wait + step), "peak_bytes": peak}

    def sec_compiled(self) -> dict:
        """torch.compile costs tens of seconds a shape: fp16 at the small size first, the rest if time allows."""
        if not self.compile:
            raise Skip("not requested (--compile off)" if self.cuda else
                       "compiled runs are measured on CUDA only here (--compile on forces them on a CPU)")
        small, large = self.plan.sizes
        cl = use_channels_last(self.dev, True)
        wanted = [(small, "fp16", "auto", cl), (small, "fp16", "auto", not cl), (small, "fp16", "1", cl),
                  (small, "bf16", "auto", cl), (large, "fp16", "auto", cl), (large, "fp16", "1", cl)]
        eager = {(e["size"], e["precision"], e["batch_kind"], e["channels_last"]): e["images_per_s"]
                 for e in (self.ok("raw") or {"entries": []})["entries"] if e.get("status") == "ok"}
        table = StreamTable("compiled (torch.compile; the first pass includes compiling)",
                            self.RAW_HEADERS, self.RAW_WIDTHS)
        entries = []
        for size, prec, batch_kind, layout in wanted:
            base = {"size": label(size), "precision": prec, "batch_kind": batch_kind, "channels_last": layout,
                    "compiled": True}
            why = self.supports(prec)
            left = self.args.budget_s - self.elapsed()
            if why:
                entries.append({**base, "status": "skipped", "reason": why})
            elif left < self.plan.compile_reserve:
                entries.append({**base, "status": "skipped", "reason": f"time budget ({left:.0f} s left)"})
            else:
                try:
                    e = self.raw_entry(size, prec, batch_kind, layout, compiled=True)
                    k = (e["size"], prec, batch_kind, layout)
                    e["over_eager"] = e["images_per_s"] / eager[k] if k in eager else None
                    entries.append(e)
                except Exception as exc:  # noqa: BLE001
                    entries.append({**base, "status": "error", "error": f"{type(exc).__name__}: {exc}"})
                    free_memory(self.dev)
            table.row(self.raw_row(entries[-1]))
        return {"entries": entries}

    # ------------------------------------------------------------ targets

    def targets(self) -> list[dict]:
        out = []
        small, large = self.plan.sizes

        def add(name, value, goal, passed, detail):
            out.append({"target": name, "value": value, "goal": goal, "pass": passed, "detail": detail})

        # 1. fp16 raw throughput at the large size as a share of the card's dense fp16 peak
        env = self.ok("environment") or {}
        fp16 = [e for sec in ("raw", "compiled") for e in (self.ok(sec) or {"entries": []})["entries"]
                if e.get("status") == "ok" and e["size"] == label(large) and e["precision"] == "fp16"
                and e["engine_layout"]]
        best = max(fp16, key=lambda e: e["images_per_s"], default=None)
        peak = env.get("fp16_peak_table_tflops") or env.get("fp16_matmul_tflops")
        source = "datasheet" if env.get("fp16_peak_table_tflops") else "measured 8192^3 matmul"
        name = f"fp16 raw at {label(large)} >= 25% of dense fp16 peak"
        if not self.cuda:
            add(name, None, ">= 0.25", None, "not measured: fp16 and its tensor-core peak are CUDA only")
        elif best is None or not peak:
            add(name, None, ">= 0.25", None, "not measured: no fp16 raw figure at this size")
        else:
            tflops = best["images_per_s"] * self.model_info["gflop_per_256x256"] * large[0] * large[1] / 256**2 / 1e3
            add(name, tflops / peak, ">= 0.25", tflops / peak >= 0.25,
                f"{tflops:.0f} of {peak:.0f} TFLOP/s ({source}); {best['images_per_s']:.1f} images/s, "
                f"batch {best['batch']}{', compiled' if best['compiled'] else ''}")
        # 2. run end to end against raw
        e2e = self.ok("end_to_end")
        for size in (small, large):
            e = next((x for x in (e2e or {"entries": []})["entries"]
                      if x["size"] == label(size) and x.get("status") == "ok"), None)
            nm = f"run end to end >= 0.9x raw at {label(size)}"
            if e is None:
                add(nm, None, ">= 0.9", None, "not measured")
            else:
                add(nm, e["ratio"], ">= 0.9", e["ratio"] >= 0.9 and e["failed"] == 0,
                    f"{e['run_images_per_s']:.1f} vs {e['raw_images_per_s']:.1f} images/s "
                    f"({e['precision']}, batch {e['batch']}); "
                    f"{e['translated']}/{e['images']} translated")
        # 3. the engine's best raw against the J-style loop
        j = self.ok("j_style")
        nm = f"engine's best raw >= 10x the J-style loop at {label(small)}"
        best_small = self.engine_best(small)
        if j is None or best_small is None:
            add(nm, None, ">= 10", None, "not measured")
        else:
            ratio = best_small["images_per_s"] / j["entries"][0]["images_per_s"]
            add(nm, ratio, ">= 10", ratio >= 10, f"{best_small['images_per_s']:.1f} ({best_small['precision']}, batch "
                f"{best_small['batch']}) vs {j['entries'][0]['images_per_s']:.1f} images/s")
        # 4. fidelity of the 16-bit precisions
        fid = self.ok("fidelity")
        for prec in ("fp16", "bf16"):
            nm = f"{prec} >= 45 dB against true fp32, no non-finite value"
            rows = [e for e in (fid or {"entries": []})["entries"] if e["precision"] == prec and "psnr_db" in e]
            if not rows:
                why = self.supports(prec)
                add(nm, None, ">= 45 dB", None, f"not measured{': ' + why if why else ''}")
                continue
            worst = min(rows, key=lambda e: e["psnr_db"] if e["psnr_db"] is not None else -1)
            bad = sum(e["non_finite"] for e in rows)
            add(nm, worst["psnr_db"], ">= 45 dB", worst["psnr_db"] is not None and worst["psnr_db"] >= 45 and bad == 0,
                f"worst on {worst['picture']}; max {worst['max_levels']:.2f} levels; {bad} non-finite"
                + ("; random weights" if self.model_info["source"].startswith("random") else ""))
        # 5. video against raw frames/s at the large size
        v = self.ok("video")
        nm = f"video >= 0.8x raw frames/s at {label(self.plan.video_size)}"
        e = next((x for x in (v or {"entries": []})["entries"] if x.get("status") == "ok"
                  and x["size"] == label(self.plan.video_size)), None)
        if e is None:
            add(nm, None, ">= 0.8", None, "not measured" + (f" (video: {self.results['video'].get('reason')})"
                                                            if "video" in self.results else ""))
        else:
            add(nm, e["ratio"], ">= 0.8", e["ratio"] >= 0.8, f"{e['frames_per_s']:.1f} vs {e['raw_frames_per_s']:.1f} "
                f"frames/s ({e['precision']}, batch {e['batch']}, {e['frames']} frames)")
        return out

    def print_targets(self) -> None:
        rows = [[t["target"], t["value"], t["goal"], {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]], t["detail"]]
                for t in self.doc["targets"]]
        print_table("targets (each a ratio of two figures from this run)",
                    ["target", "value", "goal", "", "detail"], rows)
        status = [[k, v["status"], v.get("reason") or v.get("error") or "", v["seconds"]]
                  for k, v in self.results.items()]
        print_table("sections", ["section", "status", "", "s"], status)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the JSON file (rewritten after every section)")
    ap.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny model, small sizes, few images: about a minute on CPU")
    ap.add_argument("--model", help="a checkpoint file (default: a seeded random-init resnet_9blocks)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="past this, remaining sections are skipped")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="compiled runs (auto: on CUDA)")
    ap.add_argument("--only", help=f"comma-separated sections to run, of: {','.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: 1 with --quick, else torch's choice)")
    args = ap.parse_args(argv)
    if args.only and set(args.only.split(",")) - set(SECTIONS):
        ap.error(f"unknown section(s): {','.join(sorted(set(args.only.split(',')) - set(SECTIONS)))}")
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:
        pass
    # --quick runs beside other jobs on small CPUs: with 2 threads on 2 busy cores every OpenMP region waits
    # for a descheduled thread (measured: 650 vs 20 ms a pass of the tiny model), so it takes one.
    threads = args.threads if args.threads else (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    check = GpuCheck(args)
    print(f"gpu_check: device {check.dev}, model {check.model_info['source']}, budget {args.budget_s:.0f} s, "
          f"{'quick' if args.quick else 'full'} plan; JSON to {args.out}", flush=True)
    check.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
