"""Seeded fuzzing of every decoder cyclebatch feeds: real JPEG, PNG, WebP, TIFF and BMP files and the
example video, truncated, bit-flipped and with edited headers. Each case must decode or fail with a
CycleBatchError (one line), never another exception, never a hang."""

import random
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTOS, ROOT, run_cli, tiny_generator
from cyclebatch import CycleBatchError
from cyclebatch.io.images import read_image
from cyclebatch.video.api import translate_video

SEED = 20261201
MAX_PIXELS = 4_000_000  # a header edit may claim any size: the limit (not the decoder) must say no


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["truncate", "flip", "flip-header", "header-bytes", "zero-run", "splice"])
    if kind == "truncate":
        return bytes(b[: rng.randrange(0, len(b))])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "flip-header":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(min(len(b), 256))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "header-bytes":  # sizes, chunk lengths, offsets: all live near the start
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(min(len(b), 64))] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    elif kind == "zero-run":
        i = rng.randrange(len(b))
        b[i:i + rng.randint(1, 4096)] = bytes(min(len(b) - i, 4096))
    else:  # a piece of the file copied over another place
        i, j, n = rng.randrange(len(b)), rng.randrange(len(b)), rng.randint(1, 2048)
        b[j:j + n] = b[i:i + n]
    return bytes(b)


def with_timeout(fn, seconds: float):
    """Run fn in a thread; (finished, result or exception)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - the test sorts them
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return (not t.is_alive()), box


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[Path]:
    """Small real files in every format cyclebatch reads, made from the example photos."""
    folder = tmp_path_factory.mktemp("seeds")
    rgb = Image.open(PHOTOS / "chelsea.png").convert("RGB").resize((72, 48))
    rgba = Image.open(PHOTOS / "coffee.png").convert("RGBA").resize((40, 30))
    files = []
    for name, im, kw in [("a.jpg", rgb, {"quality": 85}), ("b.png", rgb, {}), ("c.webp", rgb, {"quality": 80}),
                         ("d.tif", rgb, {}), ("e.bmp", rgb, {}), ("f.png", rgba, {}),
                         ("g.tif", rgb, {"compression": "tiff_lzw"}), ("h.webp", rgba, {"lossless": True})]:
        im.save(folder / name, **kw)
        files.append(folder / name)
    import cv2  # a 16-bit PNG goes through OpenCV's decoder

    sixteen = (np.asarray(rgb).astype(np.uint16) * 257)[..., ::-1]
    cv2.imwrite(str(folder / "i16.png"), np.ascontiguousarray(sixteen))
    files.append(folder / "i16.png")
    return files


def test_fuzzed_images_decode_or_fail_in_one_line(seeds, tmp_path):
    rng = random.Random(SEED)
    cases, unexpected, hung, failed = 240, [], [], 0
    for k in range(cases):
        seed = seeds[k % len(seeds)]
        path = tmp_path / f"case{k:03d}{seed.suffix}"
        path.write_bytes(mutate(seed.read_bytes(), rng))
        done, box = with_timeout(lambda: read_image(path, MAX_PIXELS), 10)
        if not done:
            hung.append(path.name)
        elif "error" in box:
            e = box["error"]
            if not isinstance(e, CycleBatchError) or "\n" in str(e) or path.name not in str(e):
                unexpected.append(f"{path.name}: {type(e).__name__}: {e}")
            failed += 1
        else:
            pic = box["value"]
            assert pic.rgb.ndim == 3 and pic.rgb.shape[2] == 3 and pic.rgb.dtype in (np.uint8, np.uint16)
    assert not hung, f"decoders hung on {hung}"
    assert not unexpected, "\n".join(unexpected)
    assert 0.2 * cases < failed < cases  # the mutations do break files, and not only trivially


def test_fuzzed_folder_run_reports_each_bad_file_once_and_exits_1(seeds, tmp_path):
    rng = random.Random(SEED + 1)
    src = tmp_path / "in"
    src.mkdir()
    bad = 0
    for k in range(30):
        seed = seeds[k % len(seeds)]
        path = src / f"case{k:02d}{seed.suffix}"
        path.write_bytes(mutate(seed.read_bytes(), rng))
        try:
            read_image(path, MAX_PIXELS)
        except CycleBatchError:
            bad += 1
    assert bad > 0
    torch.save(tiny_generator().state_dict(), tmp_path / "m.pth")
    r = run_cli("run", src, "-o", tmp_path / "out", "-m", tmp_path / "m.pth", "--device", "cpu",
                "--max-pixels", MAX_PIXELS, timeout=240)
    assert "Traceback" not in r.stderr
    # libtiff writes its own warnings to stderr, sometimes on the line our message starts on.
    errors = [ln[ln.index("error: "):] for ln in r.stderr.splitlines() if "error: " in ln]
    assert len(errors) == bad, r.stderr
    assert len({ln.split(":")[1] for ln in errors}) == bad  # one line per file, each file once
    assert r.returncode == 1
    assert len(list((tmp_path / "out").iterdir())) == 30 - bad


class Identity:
    """Stands in for the model: the decoders and the container code are what is fuzzed here."""

    device = torch.device("cpu")

    def auto_batch_size(self, h, w):
        return 4

    def translate_batch(self, frames, listener=None):
        return [f.copy() for f in frames]


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> Path:
    """Twelve frames of the example clip at 160x120 with its audio: quick to decode many times."""
    path = tmp_path_factory.mktemp("clip") / "short.mp4"
    translate_video(ROOT / "examples" / "clip.mp4", path, Identity(), duration=0.5, stabilize=False)
    return path


def test_fuzzed_videos_translate_or_fail_in_one_line(short_clip, tmp_path):
    rng = random.Random(SEED + 2)
    data = short_clip.read_bytes()
    unexpected, hung, failed = [], [], 0
    for k in range(24):
        src = tmp_path / f"case{k:02d}.mp4"
        src.write_bytes(mutate(data, rng))
        done, box = with_timeout(lambda: translate_video(src, tmp_path / f"out{k:02d}.mp4", Identity(),
                                                         stabilize=False), 60)
        if not done:
            hung.append(src.name)
        elif "error" in box:
            e = box["error"]
            if not isinstance(e, CycleBatchError) or "\n" in str(e):
                unexpected.append(f"{src.name}: {type(e).__name__}: {e}")
            failed += 1
            assert not (tmp_path / f"out{k:02d}.mp4").exists()  # nothing half-written
        else:
            with av.open(str(tmp_path / f"out{k:02d}.mp4")) as c:
                assert c.streams.video[0].frames > 0
    assert not hung, f"video decoding hung on {hung}"
    assert not unexpected, "\n".join(unexpected)
    assert failed > 0
