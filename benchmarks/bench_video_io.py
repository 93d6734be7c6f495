"""Video I/O costs outside the model: the encoder's threads, and FFmpeg's vs torch's colour conversions.

    python benchmarks/bench_video_io.py [--clip examples/clip.mp4] [--rounds 5] [--torch-threads N]

Figures printed (medians over rounds; the variants alternate within each round):
- encode frames/s of the clip's frames, libx264 crf 18 preset medium, with the encoder's thread count
  left to x264 (thread_count 0, what video.py sets) and forced to 1 (FFmpeg's own default), each fed RGB
  (swscale's rgb24 -> yuv420p in the encoding thread, the CPU path) or ready yuv420p planes (the GPU path,
  converted on the device);
- one frame's conversion, FFmpeg (swscale) against colour.py's torch functions on this CPU, at the clip's
  size and at 1920x1080: yuv420p -> rgb24 (decode side) and rgb24 -> yuv420p (encode side).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cyclebatch.video.colour import rgb_to_yuv420, yuv420_to_rgb  # noqa: E402


def encode_fps(rgb: list[np.ndarray], yuv: list[np.ndarray], threads: int, ready_yuv: bool) -> float:
    out = av.open(io.BytesIO(), "w", format="mp4")
    s = out.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt = rgb[0].shape[1], rgb[0].shape[0], "yuv420p"
    s.codec_context.thread_count = threads
    s.options = {"crf": "18", "preset": "medium"}
    t = time.perf_counter()
    for i in range(len(rgb)):
        if ready_yuv:
            vf = av.VideoFrame.from_ndarray(yuv[i], format="yuv420p")
        else:
            vf = av.VideoFrame.from_ndarray(rgb[i], format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        out.mux(s.encode(vf))
    out.mux(s.encode())
    fps = len(rgb) / (time.perf_counter() - t)
    out.close()
    return fps


def ms(fn, n: int = 10) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", default=str(ROOT / "examples" / "clip.mp4"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=None, help="torch's CPU threads (default: its own)")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with av.open(args.clip) as c:
        decoded = list(c.decode(video=0))
    rgb = [f.to_ndarray(format="rgb24") for f in decoded]
    yuv = [f.to_ndarray() for f in decoded]
    h, w = rgb[0].shape[:2]
    print(f"{args.clip}: {len(rgb)} frames, {w}x{h}; torch threads {torch.get_num_threads()}")
    variants = [(0, False), (1, False), (0, True), (1, True)]
    got = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants[r % 4:] + variants[:r % 4]:
            got[v].append(encode_fps(rgb, yuv, *v))
    for (threads, ready), fps in got.items():
        print(f"encode, thread_count {threads} ({'x264 picks' if threads == 0 else 'one thread'}), "
              f"{'yuv420p in' if ready else 'rgb24 in (swscale)'}: {np.median(fps):6.1f} frames/s")
    frame = decoded[0]
    for fw, fh in ((w, h), (1920, 1080)):
        f = frame.reformat(width=fw, height=fh)
        planes, pixels = f.to_ndarray(), f.to_ndarray(format="rgb24")
        tp, tr = torch.from_numpy(planes)[None], torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
        print(f"{fw}x{fh} yuv420p -> rgb24: FFmpeg {ms(lambda: f.to_ndarray(format='rgb24')):7.2f} ms, "
              f"torch {ms(lambda: yuv420_to_rgb(tp)):7.2f} ms")
        print(f"{fw}x{fh} rgb24 -> yuv420p: FFmpeg "
              f"{ms(lambda: av.VideoFrame.from_ndarray(pixels, format='rgb24').reformat(format='yuv420p')):7.2f} ms, "
              f"torch {ms(lambda: rgb_to_yuv420(tr)):7.2f} ms")


if __name__ == "__main__":
    main()
