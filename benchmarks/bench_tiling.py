"""Tiled translation: fidelity against the full frame, memory, and scale (issue 4).

    python benchmarks/bench_tiling.py [--model vintage] [--quick] [--only fidelity,scale,growth]

Every measurement runs in a fresh subprocess, because peak RSS (ru_maxrss) only ever grows within
a process. Outputs are compared as 8-bit images, so "exact up to rounding" shows as a PSNR of 80+ dB.
Fidelity runs at fp32 (the goal: exact); scale and growth at the engine's default precision.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import model_or_random, psnr  # noqa: E402
PHOTO = ROOT / "examples" / "photos" / "china.jpg"


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(spec: dict) -> None:
    """One translation in this fresh process; prints a JSON line with time and memory."""
    import cv2
    import torch

    from cyclebatch.engine.translator import Translator

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    net, _ = model_or_random(spec["model"])
    photo = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    img = cv2.resize(photo, (spec["w"], spec["h"]), interpolation=cv2.INTER_CUBIC)
    del photo
    tiled = spec["mode"] != "full"
    tr = Translator(net, device="cpu", precision=spec["precision"], tile=spec["tile"] if tiled else None,
                    context=spec["context"], tile_stats=spec["mode"] if tiled else "exact",
                    max_memory=spec.get("max_memory"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if tiled:
        from cyclebatch.engine.tiling import translate_tiled

        def progress(phase: str) -> None:  # long runs show where they are, and the peak so far
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print(f"#     {time.perf_counter() - t0:8.0f} s  {phase:<22} peak RSS so far {peak / 2**20:,.0f} MiB",
                  file=sys.stderr, flush=True)

        out, tr.last_plan = translate_tiled(tr, img, tr.tile_plan(*img.shape[:2]), progress=progress)
    else:
        out = tr.to_pixels(tr.forward(tr.to_tensor([img])))[0]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if spec.get("out"):
        np.save(spec["out"], out)
    print(json.dumps({**spec, "seconds": seconds, "peak": peak, "base": base, "precision": tr.precision,
                      "plan": str(tr.last_plan) if tiled else None}), flush=True)


def measure(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    # stderr passes through: long runs report their progress as they go
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise SystemExit(f"worker failed: {spec}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    mp = spec["h"] * spec["w"] / 1e6
    print(f"#   {spec['mode']:>8} {spec['w']}x{spec['h']} tile {spec['tile']}: {r['seconds']:.1f} s "
          f"({r['seconds'] / mp:.1f} s/MP), peak RSS {r['peak'] / 2**20:.0f} MiB "
          f"(+{(r['peak'] - r['base']) / 2**20:.0f} MiB over the loaded model and image) {r['plan'] or ''}",
          flush=True)
    return r


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def fidelity(model: str, tmp: Path, tile: int) -> None:
    print("## fidelity: china.jpg upscaled to 2048x1365, fp32, tiles of", tile, "with 64 px context", flush=True)
    base = dict(model=model, h=1365, w=2048, tile=tile, context=64, precision="fp32")
    runs = {m: measure({**base, "mode": m, "out": str(tmp / f"fid_{m}.npy")}) for m in ("full", "exact", "per-tile")}
    ref = np.load(tmp / "fid_full.npy")
    out = {m: np.load(tmp / f"fid_{m}.npy") for m in ("exact", "per-tile")}
    full_peak, full_add = runs["full"]["peak"], runs["full"]["peak"] - runs["full"]["base"]
    print("| statistics | PSNR vs full frame | max abs diff (8-bit) | peak RSS | RSS added by the pass | ratio to full frame |")
    print("|---|---|---|---|---|---|")
    print(f"| full frame (reference) | - | - | {mib(full_peak)} | {mib(full_add)} | 1.00 |")
    for m, label in (("exact", "whole image, exact (cyclebatch)"), ("per-tile", "per tile (naive)")):
        r = runs[m]
        add = r["peak"] - r["base"]
        diff = int(np.abs(out[m].astype(np.int32) - ref).max())
        print(f"| {label} | {psnr(out[m], ref):.1f} dB | {diff} | {mib(r['peak'])} | {mib(add)} | "
              f"{r['peak'] / full_peak:.2f} total, {add / full_add:.3f} added |", flush=True)


def scale(model: str, tmp: Path, side: int, tiles: tuple[int, ...]) -> None:
    print(f"## scale: {side}x{side} ({side * side / 1e6:.0f} MP), default precision, tiles {tiles}", flush=True)
    base = dict(model=model, h=side, w=side, context=64, precision="auto", mode="exact", max_memory=5 * 2**30)
    runs = [measure({**base, "tile": t, "out": str(tmp / f"scale_{t}.npy")}) for t in tiles]
    mp = side * side / 1e6
    print("| image | tiles | seconds | s/MP | peak RSS |")
    print("|---|---|---|---|---|")
    for t, r in zip(tiles, runs):
        print(f"| {side}x{side} | {t} | {r['seconds']:.0f} | {r['seconds'] / mp:.1f} | {mib(r['peak'])} |")
    if len(tiles) == 2:
        a, b = (np.load(tmp / f"scale_{t}.npy") for t in tiles)
        print(f"tile {tiles[0]} vs tile {tiles[1]}: {psnr(a, b):.1f} dB (goal >= 45), "
              f"max abs diff {int(np.abs(a.astype(np.int32) - b).max())}", flush=True)


def growth(model: str, sides: list[int], tile: int) -> None:
    print("## memory growth, default precision, tile", tile, flush=True)
    runs = [measure(dict(model=model, h=s, w=s, tile=tile, context=64, precision="auto", mode="exact",
                         max_memory=5 * 2**30))
            for s in sides]
    print("| megapixels | seconds | s/MP | peak RSS | RSS added by the pass | added bytes per pixel |")
    print("|---|---|---|---|---|---|")
    for s, r in zip(sides, runs):
        mp = s * s / 1e6
        add = r["peak"] - r["base"]
        print(f"| {mp:.1f} | {r['seconds']:.0f} | {r['seconds'] / mp:.1f} | {mib(r['peak'])} | {mib(add)} | "
              f"{add / (s * s):.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vintage", help="any model cyclebatch can load (default: vintage)")
    ap.add_argument("--quick", action="store_true", help="growth stops at 16 MP; scale at 2048x2048")
    ap.add_argument("--only", default="fidelity,scale,growth", help="comma-separated parts to run")
    ap.add_argument("--scale-size", type=int, help="side of the scale image (default 8192, quick 2048)")
    ap.add_argument("--scale-tiles", default="768,512", help="two tile sizes must agree; one only times")
    ap.add_argument("--growth-sides", help="image sides for the growth table (default 1024,2048,4096[,8192])")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    parts = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as d:
        tmp = Path(d)
        if "fidelity" in parts:
            fidelity(args.model, tmp, 256)
        if "scale" in parts:
            scale(args.model, tmp, args.scale_size or (2048 if args.quick else 8192),
                  tuple(int(t) for t in args.scale_tiles.split(",")))
        if "growth" in parts:
            sides = [1024, 2048, 4096] + ([] if args.quick else [8192])
            if args.growth_sides:
                sides = [int(v) for v in args.growth_sides.split(",")]
            growth(args.model, sides, 768)


if __name__ == "__main__":
    main()
