"""Where a Translator is built against where it runs: the libgomp thread-team effect behind rayrun.Worker.

    python benchmarks/bench_thread_teams.py [--size 128] [--precision fp32] [--rounds 20]

Each case runs in its own process (a libgomp thread pool, once made, lives as long as its thread):
  main       built and run on the main thread (a local `run`);
  one thread built and run on one helper thread (what rayrun.Worker does now);
  two        built on the main thread, run on a helper thread (Ray Data's actor before: its constructor
             runs on the main thread, its calls on a helper thread).
Torch work on two threads gives libgomp two teams, more threads than cores on a small machine, and then
its idle threads sleep instead of spinning at the end of every parallel region. Prints ms per image, the
process's CPU use and the ratio of each case to `main`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_export import cpu_description  # noqa: E402

CASES = ("main", "one thread", "two")


def measure(case: str, size: int, precision: str, rounds: int) -> dict:
    import numpy as np
    import torch

    from common import model_or_random
    from cyclebatch.engine.translator import Translator

    img = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    state: dict = {}

    def build():
        state["t"] = Translator(model_or_random("vintage")[0], device="cpu", precision=precision)

    def run():
        t = state["t"]
        for _ in range(3):
            t.translate_batch([img])
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            t.translate_batch([img])
        wall = time.perf_counter() - w0
        state["result"] = {"ms": wall / rounds * 1000, "cpu": (time.process_time() - c0) / wall,
                           "threads": torch.get_num_threads()}

    def on_a_thread(*steps):
        th = threading.Thread(target=lambda: [s() for s in steps])
        th.start()
        th.join()

    if case == "main":
        build()
        run()
    elif case == "one thread":
        on_a_thread(build, run)
    else:
        build()
        on_a_thread(run)
    return state["result"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in a child process
    a = ap.parse_args()
    if a.case:
        print(json.dumps(measure(a.case, a.size, a.precision, a.rounds)))
        return
    print(f"# {cpu_description()}")
    print(f"# vintage (or a random resnet_9blocks), {a.size}x{a.size}, {a.precision}, batch 1, {a.rounds} rounds")
    res = {}
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--size", str(a.size), "--precision",
                              a.precision, "--rounds", str(a.rounds)], capture_output=True, text=True, check=True)
        res[case] = json.loads(out.stdout.strip().splitlines()[-1])
    for case in CASES:
        r = res[case]
        print(f"{case:10s}: {r['ms']:7.1f} ms/image, CPU {r['cpu'] * 100:4.0f}%, {r['threads']} torch threads; "
              f"main/this = {res['main']['ms'] / r['ms']:.2f}")


if __name__ == "__main__":
    main()
