"""Build examples/clip.mp4: pan and zoom over three example photos, hard cuts, with a chord on AAC audio.

    python examples/make_clip.py            # 320x240, 24 fps, 4 s, about 0.3 MB
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PHOTOS = ["china.jpg", "chelsea.png", "coffee.png"]
W, H, FPS, SHOT = 320, 240, 24, 32  # frames per photo


def camera(photo: np.ndarray, t: float, shot: int) -> np.ndarray:
    """One frame of a slow camera move: zoom from 1.0x to 1.25x while panning across the photo."""
    ph, pw = photo.shape[:2]
    zoom = 1.0 + 0.25 * t
    cw, ch = min(pw, ph * W / H) / zoom, min(ph, pw * H / W) / zoom  # crop window, output aspect
    direction = 1 if shot % 2 == 0 else -1
    cx = pw / 2 + direction * (t - 0.5) * (pw - cw) * 0.8
    cy = ph / 2 + (t - 0.5) * (ph - ch) * 0.3
    s = W / cw
    m = np.float32([[s, 0, W / 2 - s * cx], [0, s, H / 2 - s * cy]])
    return cv2.warpAffine(photo, m, (W, H), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def main(out: Path = HERE / "clip.mp4") -> None:
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    c = av.open(str(tmp), "w")
    v = c.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "slow"})
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    a = c.add_stream("aac", rate=44100, layout="mono", bit_rate=64000)
    n = 0
    for k, name in enumerate(PHOTOS):
        photo = np.asarray(Image.open(HERE / "photos" / name).convert("RGB"))
        for i in range(SHOT):
            f = av.VideoFrame.from_ndarray(camera(photo, i / (SHOT - 1), k), format="rgb24")
            f.pts, f.time_base = n, Fraction(1, FPS)
            c.mux(v.encode(f))
            n += 1
    c.mux(v.encode())
    total = int(44100 * n / FPS)
    t = np.arange(total) / 44100
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63)) / 3  # A major
    env = np.minimum(1, np.minimum(t, t[-1] - t) / 0.05)  # no clicks at either end
    pcm = (0.4 * chord * env).astype(np.float32)
    for s0 in range(0, total, 1024):
        af = av.AudioFrame.from_ndarray(pcm[None, s0:s0 + 1024], format="fltp", layout="mono")
        af.sample_rate, af.pts = 44100, s0
        c.mux(a.encode(af))
    c.mux(a.encode())
    c.close()
    tmp.replace(out)
    print(f"wrote {out}: {n} frames, {W}x{H}, {FPS} fps, {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "clip.mp4")
