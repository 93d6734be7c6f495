"""Video throughput against plain image batches, and flicker with per-frame vs stabilised statistics.

    python benchmarks/bench_video.py [--model vintage] [--clip examples/clip.mp4] [--frames N]

Figures printed:
- images/s: `Translator.translate_batch` on the clip's decoded frames (already in memory, per-frame statistics);
- video frames/s: `translate_video` on the same clip, same translator (decode + model + encode + audio copy);
  ratio = video / images (goal >= 0.9), the median over rounds of each round's own ratio (the three
  measurements alternate, in a rotating order, so a machine that drifts in speed moves both sides of a
  ratio together);
- flicker = mean |out_t - out_t-1| / mean |in_t - in_t-1| over consecutive frames of one shot (pairs across
  a cut are left out), for per-frame and for stabilised statistics; reduction = 1 - stabilised / per-frame
  (goal >= 30%);
- motion-compensated residual: mean |out_t - warp(out_t-1)| in 8-bit levels, the previous frame warped onto
  the current one by the input's optical flow (OpenCV Farneback), borders left out. Real motion cancels, so
  what remains is change the model added (its statistics' flicker among it); shown for information, the
  goal above is judged on the plain measure;
- the same measure on the clip's frames before compression (rendered again by examples/make_clip.py's
  camera), next to what a perfectly stable translation scores there: each photo translated once and
  filmed with the same camera move, an output that moves exactly with the camera and has no flicker at
  all. It tells how much of the measure is flicker at all on this clip; a method can still score lower
  by changing the picture (less contrast moves less), not by flickering less.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import model_or_random  # noqa: E402
sys.path.insert(0, str(ROOT / "examples"))
from make_clip import PHOTOS, SHOT, camera  # noqa: E402
from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.video.shared_stats import StableStats  # noqa: E402
from cyclebatch.video.api import translate_video  # noqa: E402


def run_batches(tr: Translator, frames, stable: StableStats | None = None):
    bs = tr.auto_batch_size(*frames[0].shape[:2])
    outs = []
    for i in range(0, len(frames), bs):
        chunk = frames[i:i + bs]
        outs += tr.translate_batch(chunk, listener=stable)
    return outs


def flicker(inp, out, cuts) -> float:
    pairs = [t for t in range(1, len(inp)) if not cuts[t]]
    d = lambda seq, t: np.abs(seq[t].astype(np.float32) - seq[t - 1].astype(np.float32)).mean()
    return float(np.mean([d(out, t) for t in pairs]) / np.mean([d(inp, t) for t in pairs]))


def warp_residual(inp, out, cuts, border: int = 16) -> float:
    import cv2

    res = []
    for t in range(1, len(inp)):
        if cuts[t]:
            continue
        g0, g1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (inp[t - 1], inp[t]))
        flow = cv2.calcOpticalFlowFarneback(g1, g0, None, 0.5, 3, 21, 3, 5, 1.1, 0)  # t -> t-1, per pixel of t
        h, w = g1.shape
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        prev = cv2.remap(out[t - 1], gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR)
        d = np.abs(out[t].astype(np.float32) - prev.astype(np.float32))
        res.append(d[border:-border, border:-border].mean())
    return float(np.mean(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vintage")
    ap.add_argument("--clip", default=str(ROOT / "examples" / "clip.mp4"))
    ap.add_argument("--speed-frames", type=int, default=24, help="frames timed per speed round (0: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--momentum", type=float, nargs="*", default=[0.8, 1.0],
                    help="1.0 freezes each shot's first statistics: the most that shared statistics can do")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    model, label = model_or_random(args.model)
    tr = Translator(model, device=args.device, precision=args.precision)
    with av.open(args.clip) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    h, w = frames[0].shape[:2]
    timed = frames[:args.speed_frames] if args.speed_frames else frames
    with av.open(args.clip) as c:
        rate = float(c.streams.video[0].average_rate)
    duration = len(timed) / rate if args.speed_frames else None
    print(f"model {label}; {len(frames)} frames {w}x{h} ({len(timed)} timed per round); {tr.precision} on {tr.device}; "
          f"batch {tr.auto_batch_size(h, w)}; torch threads {torch.get_num_threads()}")

    run_batches(tr, timed[:tr.auto_batch_size(h, w)])  # warm-up
    rounds = []  # (images/s, video frames/s per-frame statistics, video frames/s stabilised)
    with tempfile.TemporaryDirectory() as d:
        def images() -> float:
            t = time.perf_counter()
            run_batches(tr, timed)
            return len(timed) / (time.perf_counter() - t)

        def video(stabilize: bool) -> float:
            res = translate_video(args.clip, Path(d) / "out.mp4", tr, stabilize=stabilize, duration=duration,
                                   overwrite=True)
            return res.frames / res.seconds

        measures = [images, lambda: video(False), lambda: video(True)]
        for r in range(args.rounds):
            # Each round starts with the next measurement, so a slowing machine favours none of them.
            got = {k: measures[k]() for k in (r % 3, (r + 1) % 3, (r + 2) % 3)}
            rounds.append((got[0], got[1], got[2]))
    print("rounds (images/s, video, video stabilised): " + "; ".join(f"{a:.2f} {b:.2f} {c:.2f}" for a, b, c in rounds))
    med = lambda k: float(np.median([r[k] for r in rounds]))  # noqa: E731
    ratio = lambda k: float(np.median([r[k] / r[0] for r in rounds]))  # noqa: E731
    print(f"images/s (translate_batch)            {med(0):7.2f}")
    print(f"video frames/s (per-frame statistics) {med(1):7.2f}   ratio {ratio(1):.2f} (goal >= 0.9)")
    print(f"video frames/s (stabilised)           {med(2):7.2f}   ratio {ratio(2):.2f} (goal >= 0.9)")

    probe = StableStats(tr)
    probe.begin(frames)
    cuts = probe.cuts
    print(f"scene cuts found: {sum(cuts[1:])} at frames {[i for i in range(1, len(cuts)) if cuts[i]]}")
    plain = run_batches(tr, frames)
    f_plain = flicker(frames, plain, cuts)
    w_in, w_plain = warp_residual(frames, frames, cuts), warp_residual(frames, plain, cuts)
    print(f"flicker, per-frame statistics         {f_plain:.3f}")
    print(f"motion-compensated residual: input {w_in:.2f} levels, per-frame statistics {w_plain:.2f}")
    for m in args.momentum:
        with StableStats(tr, momentum=m) as st:
            stab = run_batches(tr, frames, st)
        f_stab = flicker(frames, stab, cuts)
        diff = np.mean([np.abs(a.astype(np.float32) - b).mean() for a, b in zip(stab, plain)])
        print(f"flicker, stabilised (momentum {m:.2f})   {f_stab:.3f}   reduction {100 * (1 - f_stab / f_plain):.1f}% "
              f"(goal >= 30%); mean |stabilised - per-frame| {diff:.2f} levels")
        w_stab = warp_residual(frames, stab, cuts)
        print(f"  motion-compensated residual {w_stab:.2f} levels, {100 * (1 - w_stab / w_plain):.1f}% below per-frame")

    if Path(args.clip).resolve() == (ROOT / "examples" / "clip.mp4").resolve():
        floor(tr, args.momentum)


def floor(tr: Translator, momenta) -> None:
    from PIL import Image

    inp, per_frame, ideal = [], [], []
    for k, name in enumerate(PHOTOS):
        photo = np.asarray(Image.open(ROOT / "examples" / "photos" / name).convert("RGB"))
        translated = tr.translate_batch([photo])[0]
        shot = [camera(photo, i / (SHOT - 1), k) for i in range(SHOT)]
        inp += shot
        per_frame += run_batches(tr, shot)
        ideal += [camera(translated, i / (SHOT - 1), k) for i in range(SHOT)]
    cuts = [i % SHOT == 0 for i in range(len(inp))]
    f_per = flicker(inp, per_frame, cuts)
    print(f"the same measure on the clip's frames before compression: per-frame statistics {f_per:.3f}")
    for m in momenta:
        with StableStats(tr, momentum=m) as st:
            f = flicker(inp, run_batches(tr, inp, st), cuts)
        print(f"  stabilised (momentum {m:.2f}) {f:.3f}, {100 * (1 - f / f_per):.1f}% below per-frame")
    f_ideal = flicker(inp, ideal, cuts)
    print(f"  an output with no flicker at all (each photo translated once, filmed with the clip's camera move) "
          f"{f_ideal:.3f}, {100 * (1 - f_ideal / f_per):.1f}% below per-frame")

if __name__ == "__main__":
    main()
