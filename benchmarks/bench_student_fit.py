"""Where a distilled student's distance from its teacher comes from: the shape's capacity, the photos it never
saw, or crops against whole photos. It answers whether more time or more photos could reach a fidelity goal,
or only a larger student.

    python benchmarks/bench_distill.py --photos /tmp/corpus --minutes 60 --runs-dir /tmp/b60/runs --name s60
    python benchmarks/bench_student_fit.py --run /tmp/b60/runs/s60 --held /tmp/corpus/held-out --iterations 1800

For a finished `cyclebatch distill` run (its generator.safetensors, cache/crops.npz and config.json), prints the
student's PSNR to the teacher on:
- CROPS: of its own crop bank (what it trained on), and fresh crops of the same photos, cut the same way;
- WHOLE: its training photos and the --held photos, whole at 256 px on the shorter side;
- CONTEXT: the teacher's output for a 128 px crop against the same region of its output for the whole photo
  (InstanceNorm statistics of the crop against the photo's): how far the targets a crop gives are from what the
  teacher does to that region in `run`;
- CEILING: the student trained further on nothing but --memorise of its own crops (Adam from 3e-4, cosine to 0;
  bf16 where the CPU has bf16 units), scored on them at six points. A shape that cannot reproduce a few hundred
  crops it has seen a hundred times each to a fidelity goal cannot reach the goal on photos it never saw.
All passes are the plain network in fp32 (the bf16 engine is 53-55 dB from its fp32 output on these photos: no
ceiling). The CPU's features are printed beside the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_distill import cpu  # noqa: E402

from cyclebatch.engine.passes import to_pixels  # noqa: E402
from cyclebatch.io.images import resize_to  # noqa: E402
from cyclebatch.models.registry import load_generator  # noqa: E402
from cyclebatch.train.crops import COLOUR_SHARE, CropBank, cut, recolour  # noqa: E402
from cyclebatch.train.data import find_images, load_rgb8  # noqa: E402
from cyclebatch.train.distill import split_photos  # noqa: E402
from cyclebatch.train.distill_step import training_dtype  # noqa: E402
from cyclebatch.train.fidelity import psnr  # noqa: E402

SHORT = 256  # px: whole photos are scored at this shorter side


def as_input(images) -> torch.Tensor:
    """uint8 HxWx3 images (a list or an N x H x W x 3 array) -> the network's NCHW floats in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def outputs(net, images: list[np.ndarray], batch: int = 32) -> list[np.ndarray]:
    """The network's uint8 outputs, in batches of same-sized images (one at a time otherwise)."""
    net.eval()
    out = []
    same = len({x.shape for x in images}) == 1
    step = batch if same else 1
    for i in range(0, len(images), step):
        with torch.no_grad():
            out += to_pixels(net(as_input(images[i:i + step])))
    return out


def mean_psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([psnr(x, y) for x, y in zip(a, b)]))


def whole(files: list[Path], short: int = SHORT) -> list[np.ndarray]:
    """The photos, scaled to `short` px on the shorter side (sides multiples of 4)."""
    images = []
    for path in files:
        rgb = load_rgb8(path)
        h, w = rgb.shape[:2]
        f = short / min(h, w)
        images.append(resize_to(rgb, (max(4, round(w * f) // 4 * 4), max(4, round(h * f) // 4 * 4))))
    return images


def context(teacher, images: list[np.ndarray], fulls: list[np.ndarray], size: int, rnd: random.Random) -> float:
    """Mean PSNR between the teacher's output for crops and the same regions of its output for the whole photo
    (`fulls`: its outputs for `images`)."""
    scores = []
    for full, img in zip(fulls, images):
        for _ in range(3):
            y, x = rnd.randint(0, img.shape[0] - size), rnd.randint(0, img.shape[1] - size)
            alone = outputs(teacher, [img[y:y + size, x:x + size]])[0]
            scores.append(psnr(alone, full[y:y + size, x:x + size]))
    return float(np.mean(scores))


def ceiling(student, inputs: np.ndarray, targets: np.ndarray, iterations: int, batch: int, seed: int):
    """Train a copy of `student` on these crops only; yield (iteration, seconds, PSNR on them) six times."""
    net = copy.deepcopy(student).train().requires_grad_(True)
    dtype = training_dtype("auto", torch.device("cpu"))
    opt = torch.optim.Adam(net.parameters(), lr=3e-4, betas=(0.9, 0.99))
    x_all, y_all = as_input(inputs), as_input(targets)
    forward = torch.compile(net, dynamic=False)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for it in range(iterations):
        for g in opt.param_groups:
            g["lr"] = 3e-4 * 0.5 * (1 + np.cos(np.pi * it / iterations))
        idx = torch.from_numpy(rng.choice(len(inputs), batch, replace=False))
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = forward(x_all[idx])
        loss = (out.float() - y_all[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % max(1, iterations // 6) == 0 or it + 1 == iterations:
            yield it + 1, time.perf_counter() - started, mean_psnr(outputs(net, list(inputs)), list(targets))
            net.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished distillation run folder")
    ap.add_argument("--held", required=True, help="photos the run never saw, scored whole")
    ap.add_argument("--crops", type=int, default=256, help="crops scored from the bank, and fresh ones cut")
    ap.add_argument("--memorise", type=int, default=256, help="crops the ceiling test trains on")
    ap.add_argument("--iterations", type=int, default=1800, help="of the ceiling test; 0 skips it")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    bank = CropBank.load(run / "cache" / "crops.npz")
    if bank is None:
        sys.exit(f"{run}: no crop bank in cache/crops.npz")
    student = load_generator(str(run / "generator.safetensors"), quiet=True).float()
    teacher = load_generator(config["teacher"], direction=config.get("direction", "AtoB"), quiet=True).float()
    size = bank.inputs.shape[1]
    print(f"# {cpu()}; torch {torch.__version__}")
    print(f"# run {run} ({student.config.describe()}), teacher {config['teacher']}, {len(bank)} crops of {size} px")

    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(bank), min(args.crops, len(bank)), replace=False)
    own_x, own_y = list(bank.inputs[pick]), list(bank.targets[pick])
    print(f"CROPS  own bank ({len(pick)} of {len(bank)}): {mean_psnr(outputs(student, own_x), own_y):.2f} dB")
    rnd = random.Random(args.seed)
    trained, scored = split_photos(find_images(config["photos"]), config.get("val", ""), print)
    photos = [load_rgb8(p) for p in trained]
    fresh = [cut(photos[i % len(photos)], size, rnd) for i in range(args.crops)]
    fresh = [recolour(c, rnd) if rnd.random() < COLOUR_SHARE else c for c in fresh]
    print(f"CROPS  fresh crops of the same photos ({len(fresh)}): "
          f"{mean_psnr(outputs(student, fresh), outputs(teacher, fresh)):.2f} dB")
    held = whole(find_images(args.held))
    sets = {"its training photos": whole(trained), "the photos it was scored on while training": whole(scored),
            "--held photos": held}
    targets = {name: outputs(teacher, images) for name, images in sets.items()}
    for name, images in sets.items():
        print(f"WHOLE  {name} ({len(images)}, {SHORT} px): "
              f"{mean_psnr(outputs(student, images), targets[name]):.2f} dB")
    print(f"CONTEXT teacher on {size} px crops alone against the same regions in the whole held-out photos: "
          f"{context(teacher, held, targets['--held photos'], size, rnd):.2f} dB")
    if args.iterations:
        mem = rng.choice(len(bank), min(args.memorise, len(bank)), replace=False)
        for it, secs, score in ceiling(student, bank.inputs[mem], bank.targets[mem], args.iterations, 16, args.seed):
            print(f"CEILING {len(mem)} crops memorised, iteration {it} ({secs:.0f} s): {score:.2f} dB", flush=True)


if __name__ == "__main__":
    main()
