"""`cyclebatch run` throughput against the raw model and against a naive official-test.py-style loop.

    python benchmarks/bench_run.py [--model vintage] [--n256 16] [--n1024 4] [--precision fp32] [--backend auto]

Prints, per resolution (real photos from examples/photos, centre-cropped and resized):
  1. raw model throughput: Translator.forward on ready tensors (same precision and batch size as run),
  2. end-to-end `run` throughput (decode, batch, model, encode, atomic write) and its ratio to (1); goal >= 0.9,
  3. a naive loop like the official test.py (PIL decode, batch 1, fp32, sequential save) and run's ratio
     to it; goal >= 2x on a 2-core CPU with default settings.
All three run in one process, one after another, so the ratios compare like with like.
Then 4. fidelity: run's output against the fp32 model on one 256 px photo, beside a plain bf16 copy of
the model (no Winograd), in 8-bit levels, so the engine's speed-ups are seen to cost no accuracy.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import model_or_random, psnr  # noqa: E402
from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.run.pipeline import translate_paths  # noqa: E402


def make_photos(folder: Path, size: int, n: int) -> list[Path]:
    photos = sorted((ROOT / "examples" / "photos").glob("*.[jp][pn]g"))
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        im = Image.open(photos[i % len(photos)]).convert("RGB")
        s = min(im.size)
        im = im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width + s) // 2, (im.height + s) // 2))
        p = folder / f"{i:03d}.jpg"
        im.resize((size, size), Image.BICUBIC).save(p, quality=95)
        paths.append(p)
    return paths


def raw_throughput(t: Translator, size: int, n: int) -> float:
    bs = t.auto_batch_size(size, size)
    x = torch.rand(bs, 3, size, size) * 2 - 1
    t.forward(x)  # warm-up
    start = time.perf_counter()
    done = 0
    while done < n:
        t.forward(x)
        done += bs
    return done / (time.perf_counter() - start)


def naive_loop(net, paths: list[Path], out: Path) -> float:
    """What the official test.py does per image, minus its resize to 256: decode, fp32, batch 1, save."""
    out.mkdir()
    net = net.float()
    start = time.perf_counter()
    with torch.no_grad():
        for p in paths:
            a = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1
            y = net(torch.from_numpy(a).permute(2, 0, 1).contiguous()[None])  # NCHW, as torchvision's ToTensor
            img = ((y[0].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(out / p.name)
    return len(paths) / (time.perf_counter() - start)


def levels(y: torch.Tensor, ref: torch.Tensor) -> str:
    """[-1, 1] outputs compared in 8-bit levels."""
    a, b = (y.float().numpy() + 1) * 127.5, (ref.numpy() + 1) * 127.5
    d = np.abs(a - b)
    return f"mean {d.mean():.3f}  max {d.max():.2f} levels  ({psnr(a, b):.1f} dB)"


def fidelity(net, t: Translator, path: Path) -> None:
    x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        ref = net(x)
        dtype = t.weights_dtype or torch.float32
        plain = copy.deepcopy(net).to(dtype)(x.to(dtype))
        print(f"\n4. fidelity against the fp32 model ({path.name}, {x.shape[-1]} px)")
        engine = f"{t.precision}, Winograd F({t.winograd},3)" if t.winograd else t.precision
        print(f"  run's engine ({engine}):".ljust(44) + levels(t.forward(x), ref))
        print(f"  plain {t.precision} copy of the model:".ljust(44) + levels(plain, ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vintage")
    ap.add_argument("--n256", type=int, default=16)
    ap.add_argument("--n1024", type=int, default=4)
    ap.add_argument("--precision", default="auto", help="the engine's precision (fp32: what CPUs without bf16 run)")
    ap.add_argument("--backend", default="torch", help="torch, openvino or auto (as `run --backend`)")
    args = ap.parse_args()
    net, name = model_or_random(args.model)
    t = Translator(net, precision=args.precision, backend=args.backend, adapt_threads=True)  # as `run`
    print(f"model {name}, device {t.device}, precision {t.precision}, backend {args.backend}, "
          f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        for size, n in ((256, args.n256), (1024, args.n1024)):
            paths = make_photos(Path(tmp) / f"in{size}", size, n)
            raw = raw_throughput(t, size, n)
            s = translate_paths([str(Path(tmp) / f"in{size}")], Path(tmp) / f"out{size}", t)
            assert s.translated == n and s.failed == 0, s.failures
            e2e = s.images_per_second
            naive = naive_loop(net, paths, Path(tmp) / f"naive{size}")
            print(f"\n{size}x{size}, {n} real photos, batch {t.auto_batch_size(size, size)}, via {s.backends}")
            print(f"  1. raw model      {raw:8.3f} images/s")
            print(f"  2. run end-to-end {e2e:8.3f} images/s   run / raw   = {e2e / raw:5.2f}  (goal >= 0.90)")
            print(f"  3. naive loop     {naive:8.3f} images/s   run / naive = {e2e / naive:5.2f}  (goal >= 2.00)")
        fidelity(net, t, Path(tmp) / "in256" / "000.jpg")


if __name__ == "__main__":
    main()
