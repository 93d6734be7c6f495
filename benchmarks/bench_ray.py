"""`run --ray` on a local 2-CPU Ray cluster against a local `run`, on the same small images.

    python benchmarks/bench_ray.py [--n 200] [--size 128] [--model vintage] [--precision auto] [--cpus 2] [--actor-cpus N]
                                   [--rows 32] [--repeat 1] [--timeline]

Prints, for both: images/s over the whole run (the Ray figure includes starting the actors and loading
the model in them) and in the steady state (from the first finished image to the last), the ratio
ray/local of each (goal >= 0.85), the cluster's start-up time on its own, who used the cores in each
steady state (per kind of process: this one, the actors, Ray Data's helper actors, Ray's daemons),
whether the outputs are bitwise equal, the CPU's features and the load average before and after. --timeline: also the Ray run's
start, moment by moment, from the driver and from inside the actors (rayrun.TIMELINE). --repeat K: K such
pairs, each with a cluster of its own, and the medians of their ratios (this host's speed drifts by the minute).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_export import cpu_description  # noqa: E402
from common import ROOT, model_or_random  # noqa: E402
from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.run.pipeline import Reporter, RunOptions, translate_paths  # noqa: E402


def cpu_seconds() -> dict:
    """{pid: (what it is, CPU seconds so far)} for every process on this machine (Linux /proc)."""
    tick, me, out = os.sysconf("SC_CLK_TCK"), os.getpid(), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if int(pid) == me:
            what = "this process (local run / Ray driver)"
        elif "MapWorker" in cmd:
            what = "the translating actor(s)"
        elif cmd.startswith("ray::") and "Agent" not in cmd:
            what = "Ray Data's helper actors"
        elif "/ray/" in cmd or cmd.startswith(("ray::", "/usr/bin/python3 -m ray")) or "-m ray." in cmd:
            what = "Ray's daemons (raylet, GCS, agents)"
        else:
            what = "everything else"
        out[int(pid)] = (what, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_shares(before: dict, after: dict, seconds: float) -> dict:
    """Percent of one core each kind of process used between two cpu_seconds() snapshots."""
    shares: dict = {}
    for pid, (what, t) in after.items():
        shares[what] = shares.get(what, 0.0) + (t - before.get(pid, (what, 0.0))[1]) / seconds * 100
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


class Clock(Reporter):
    """Times the first and the last finished images (the steady state lies between them). Ray hands results
    back a task (32 images) at a time, so everything reported with the first one counts as "first". Also
    takes every process's CPU time at the first and the last finished image: who used the cores meanwhile."""

    def start(self, total: int, skipped: int) -> None:
        self.first, self.last, self.n, self.n_first = None, None, 0, 0
        self.cpu_first, self.cpu_last = {}, {}

    def advance(self, n: int = 1) -> None:
        now = time.perf_counter()
        if self.first is None or now - self.first < 1e-3:
            if self.first is None:
                self.cpu_first = cpu_seconds()
            self.first = self.first or now
            self.n_first += n
        self.last, self.n = now, self.n + n

    def stop(self) -> None:
        self.cpu_last = cpu_seconds()

    def shares(self) -> str:
        """'who: % of one core, ...' over the steady state."""
        if not self.cpu_first or not self.last or self.last <= self.first:
            return "n/a"
        shares = cpu_shares(self.cpu_first, self.cpu_last, self.last - self.first)
        return ", ".join(f"{what} {pct:.1f}" for what, pct in shares.items() if pct >= 0.05)

    def steady(self) -> float:
        """Images/s after the first finished results (model loading and warm-up left out)."""
        return (self.n - self.n_first) / (self.last - self.first) if self.last and self.last > self.first else 0.0


def make_photos(folder: Path, size: int, n: int) -> None:
    photos = sorted((ROOT / "examples" / "photos").glob("*.[jp][pn]g"))
    folder.mkdir(parents=True)
    for i in range(n):
        im = Image.open(photos[i % len(photos)]).convert("RGB")
        s = min(im.size)
        left, top = (i * 37) % (im.width - s + 1), (i * 53) % (im.height - s + 1)  # every image differs
        im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC).save(folder / f"{i:03d}.jpg", quality=92)


def print_timeline(text: str) -> None:
    """Seconds from the Ray run's call, and each step's own seconds (since the step before it)."""
    rows = sorted((float(t), who, what) for t, who, what in (line.split("\t") for line in text.splitlines() if line))
    t0 = next(t for t, _, what in rows if what == "run called")
    print("Ray start-up timeline (s from translate_paths_ray's call; step = since the line before):")
    before = t0
    for t, who, what in rows:
        print(f"  {t - t0:6.2f}  step {t - before:5.2f}  {who:12s} {what}")
        before = t


def once(args, model, kwargs: dict) -> dict:
    """One local run, then a local cluster started, one Ray run on it, and the cluster stopped."""
    import ray

    from cyclebatch.run import rayrun

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as d:
        d = Path(d)
        make_photos(d / "in", args.size, args.n)
        t = Translator(model, **kwargs)
        batch = t.auto_batch_size(args.size, args.size)
        local_clock = Clock()
        local = translate_paths([str(d / "in")], d / "local", t, RunOptions(), local_clock)

        begun = time.perf_counter()
        how = rayrun.connect(num_cpus=args.cpus)
        cluster_start = time.perf_counter() - begun
        ray_clock = Clock()
        if args.timeline:
            os.environ[rayrun.TIMELINE] = str(d / "timeline.tsv")
        remote, facts = rayrun.translate_paths_ray([str(d / "in")], d / "ray", model, kwargs, RunOptions(), ray_clock,
                                                   cpus=args.actor_cpus, rows_per_task=args.rows)
        ray.shutdown()
        timeline = (d / "timeline.tsv").read_text() if args.timeline else ""
        same = all((d / "ray" / p.name).read_bytes() == p.read_bytes() for p in (d / "local").iterdir())
    assert local.translated == remote.translated == args.n, (local, remote)
    return {"local": local, "remote": remote, "facts": facts, "how": how, "cluster_start": cluster_start,
            "precision": t.precision, "batch": batch, "same": same, "timeline": timeline,
            "local_steady": local_clock.steady(), "ray_steady": ray_clock.steady(),
            "local_cpu": local_clock.shares(), "ray_cpu": ray_clock.shares()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model", default="vintage")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--actor-cpus", type=int, default=None, help="CPUs (threads) per actor, as --ray-cpus (default: "
                                                                     "a node's cores, one actor)")
    ap.add_argument("--rows", type=int, default=32, help="images per Ray task (the CLI: 32, or 4 batches)")
    ap.add_argument("--repeat", type=int, default=1, help="local-then-Ray pairs, each with its own cluster; "
                                                          "the medians of their ratios close the output")
    ap.add_argument("--timeline", action="store_true", help="print the Ray run's start-up, moment by moment")
    args = ap.parse_args()
    import ray

    print(f"# {cpu_description()}")
    print(f"# load average before: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, ray {ray.__version__}, "
          f"{torch.get_num_threads()} torch threads locally")
    model, name = model_or_random(args.model)
    kwargs = {"device": "cpu", "precision": args.precision}
    whole, steady = [], []
    for rep in range(args.repeat):
        r = once(args, model, kwargs)
        local, remote, facts = r["local"], r["remote"], r["facts"]
        lw, rw = local.images_per_second, remote.images_per_second
        ls, rs = r["local_steady"], r["ray_steady"]
        whole.append(rw / lw)
        steady.append(rs / ls if ls else 0.0)
        if rep == 0:
            print(f"model {name}, {args.n} images of {args.size}x{args.size}, precision {r['precision']}, "
                  f"batch {r['batch']}")
            print(f"Ray pool: {facts['actors']} actor(s) x {facts['cpus_per_actor']} CPU(s), {args.rows} images "
                  f"per task")
        if args.repeat > 1:
            print(f"-- pair {rep + 1} of {args.repeat}")
        print(f"Ray cluster start ({r['how']}, Ray Data's helper actors included): {r['cluster_start']:.1f} s (not "
              f"in the figures below); the run's own connect and plan: {facts['startup_seconds']:.2f} s (not in them "
              f"either)")
        print(f"whole run   : local {lw:.2f} images/s ({local.seconds:.1f} s), ray {rw:.2f} images/s "
              f"({remote.seconds:.1f} s, actor start included); ray/local = {whole[-1]:.3f}")
        print(f"steady state: local {ls:.2f} images/s, ray {rs:.2f} images/s; ray/local = {steady[-1]:.3f}")
        print(f"CPU in the steady state, % of one core ({os.cpu_count()} cores): local run: {r['local_cpu']}")
        print(f"                                         Ray run: {r['ray_cpu']}")
        print(f"outputs bitwise equal: {r['same']}")
        if r["timeline"]:
            print_timeline(r["timeline"])
    if args.repeat > 1:
        print(f"median of {args.repeat} pairs: whole run ray/local = {statistics.median(whole):.3f} "
              f"(range {min(whole):.3f}-{max(whole):.3f}), steady state {statistics.median(steady):.3f} "
              f"(range {min(steady):.3f}-{max(steady):.3f}); goal >= 0.85")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
