"""Training speed at 256x256 with the default networks (resnet_9blocks, ngf 64, 70x70 PatchGAN, batch 1).

Prints iterations/s in steady state and the share of each iteration spent outside `train_step`
(forward, backward, losses, pools and optimizer steps of all four networks): data loading, host to
device copies, logging and progress. Goal: under 10%. Both figures come from one run's timers.
The data is examples/photos (6 real photos, ~640x427), resized to 286 and randomly cropped to 256.

    python benchmarks/bench_train.py [--iters 8] [--precision fp32|bf16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=8, help="iterations in all; the first is not measured")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from cyclebatch.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    photos = sorted((ROOT / "examples" / "photos").glob("*.[jp][pn]g"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, b = tmp / "A", tmp / "B"
        for k in range(max(args.iters, 6)):  # one epoch holds every iteration: no epoch-end work in the figures
            for folder in (a, b):
                folder.mkdir(exist_ok=True)
                src = photos[(k + (folder is b) * 3) % len(photos)]
                shutil.copy(src, folder / f"{k}{src.suffix}")
        config = TrainConfig(str(a), str(b), "bench", runs_dir=str(tmp / "runs"), max_iterations=args.iters,
                             precision=args.precision, device=args.device, workers=args.workers, progress=False)
        t0 = time.perf_counter()
        r = train(config, log=lambda msg: print(msg, flush=True))
        wall = time.perf_counter() - t0

    n = r.measured_iterations
    if n < 1:
        sys.exit("need at least 2 iterations")
    per_it = r.loop_seconds / n
    outside = 1 - r.step_seconds / r.loop_seconds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"default networks at 256x256, batch 1, {n} measured iterations (of {r.iteration}); wall {wall:.1f} s "
          "including setup and the final checkpoint")
    print(f"iterations/s: {1 / per_it:.3f}   ({per_it:.2f} s per iteration; train_step {r.step_seconds / n:.2f} s)")
    print(f"share of time outside the model: {outside * 100:.1f}%   (goal: under 10%: "
          f"{'met' if outside < 0.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
