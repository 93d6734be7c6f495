"""`cyclebatch video`: timing, audio, rotation, odd sizes, clips, frame folders, atomicity, bad input."""

import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from cyclebatch.models.checkpoints import save_generator
from cyclebatch.errors import CycleBatchError
from cyclebatch.engine.translator import Translator
from cyclebatch.video.shared_stats import StableStats
from cyclebatch.video.temporal import FlowStabilizer
from cyclebatch.video.api import translate_video
from conftest import ROOT, run_cli, tiny_generator

NTSC = Fraction(30000, 1001)


def pattern(i, h, w):
    """A moving pattern with a marker: red block in the top-left corner, a bar sweeping right."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 4 + i * 7) % 256, (y * 5) % 256, np.full_like(x, 80)], -1).astype(np.uint8)
    img[: h // 4, : w // 4] = (255, 0, 0)
    return img


def synth(path, n=24, w=66, h=50, audio=True, vfr=False, rotation=None, seconds_audio=None, acodec="aac"):
    """A clip at 29.97 fps (or variable rate), optional sine tone and display rotation. Returns video PTS."""
    c = av.open(str(path), "w")
    v = c.add_stream("libx264", rate=NTSC)
    sw, sh = (h, w) if rotation in (90, 270, -90) else (w, h)  # stored size; w x h is the upright size
    v.width, v.height = sw, sh
    v.pix_fmt = "yuv444p" if (w % 2 or h % 2) else "yuv420p"  # x264 4:2:0 needs even sizes
    v.codec_context.time_base = Fraction(1, 30000)
    if rotation is not None:
        v.set_display_rotation(rotation)
    a = c.add_stream(acodec, rate=44100, layout="mono") if audio else None
    pts, t = [], 0
    for i in range(n):
        img = pattern(i, h, w)
        if rotation:  # store the picture so that the display matrix turns it upright
            img = np.ascontiguousarray(np.rot90(img, k=-rotation // 90))
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts, f.time_base = t, Fraction(1, 30000)
        pts.append(t)
        t += (1001 if i % 3 else 3003) if vfr else 1001
        c.mux(v.encode(f))
    c.mux(v.encode())
    if a is not None:
        total = int(44100 * (seconds_audio or n / float(NTSC)))
        for s0 in range(0, total, 1024):
            k = min(1024, total - s0)
            tone = (0.3 * np.sin(2 * np.pi * 440 * (s0 + np.arange(k)) / 44100)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
            af.sample_rate, af.pts = 44100, s0
            c.mux(a.encode(af))
        c.mux(a.encode())
    c.close()
    return pts


class Identity:
    """A stand-in translator: the pipeline's timing and geometry are checked on exact pixels."""

    def auto_batch_size(self, h, w):
        return 4

    def translate_batch(self, frames):
        return [f.copy() for f in frames]


def probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        info = dict(codec=v.codec_context.name, w=frames[0].width, h=frames[0].height, n=len(frames),
                    pts=[f.pts for f in frames], tb=v.time_base, rate=v.average_rate,
                    pix=frames[0].format.name, rotation=frames[0].rotation,
                    first=frames[0].to_ndarray(format="rgb24"))
        info["audio"] = [(s.codec_context.name, float(s.duration * s.time_base) if s.duration else None)
                         for s in c.streams.audio]
    return info


def test_timing_codec_and_audio_copy_preserved(tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    pts = synth(src, n=24, audio=True)
    res = translate_video(src, dst, Identity())
    o = probe(dst)
    assert res.frames == 24 and o["n"] == 24
    assert o["pts"] == pts and o["tb"] == Fraction(1, 30000) and o["rate"] == NTSC
    assert (o["codec"], o["pix"], o["w"], o["h"]) == ("h264", "yuv420p", 66, 50)
    assert len(o["audio"]) == 1 and o["audio"][0][0] == "aac"
    assert abs(o["audio"][0][1] - 24 / float(NTSC)) < 0.05
    assert np.abs(o["first"].astype(int) - pattern(0, 50, 66)).mean() < 6  # the picture survived


def test_without_audio_no_audio_stream(tmp_path):
    synth(tmp_path / "in.mp4", n=12, audio=False)
    translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity())
    o = probe(tmp_path / "out.mp4")
    assert o["n"] == 12 and o["audio"] == []


def test_variable_frame_rate_keeps_every_timestamp(tmp_path):
    pts = synth(tmp_path / "in.mp4", n=21, audio=False, vfr=True)
    assert len(set(np.diff(pts))) == 2
    translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity())
    assert probe(tmp_path / "out.mp4")["pts"] == pts


def test_rotation_is_written_upright(tmp_path):
    synth(tmp_path / "in.mp4", n=8, w=64, h=48, audio=False, rotation=90)
    assert probe(tmp_path / "in.mp4")["rotation"] == 90
    translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity())
    o = probe(tmp_path / "out.mp4")
    assert (o["w"], o["h"], o["rotation"]) == (64, 48, 0)  # stored 48x64, shown and written 64x48
    assert np.abs(o["first"].astype(int) - pattern(0, 48, 64)).mean() < 6  # upright: red corner top-left


def test_odd_size_padded_by_one_edge_pixel_not_scaled(tmp_path):
    synth(tmp_path / "in.mp4", n=6, w=67, h=51, audio=False)
    translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity())
    o = probe(tmp_path / "out.mp4")
    assert (o["w"], o["h"], o["n"]) == (68, 52, 6)
    img = o["first"].astype(int)
    assert np.abs(img[:51, :67] - pattern(0, 51, 67)).mean() < 6  # not resampled: pixels line up
    assert np.abs(img[:, 67] - img[:, 66]).mean() < 6 and np.abs(img[51] - img[50]).mean() < 6


def test_clip_start_and_duration(tmp_path):
    pts = synth(tmp_path / "in.mp4", n=24, audio=True)
    translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity(), start=0.2, duration=0.4)
    o = probe(tmp_path / "out.mp4")
    kept = [p for p in pts if 0.2 <= p / 30000 < 0.6]
    assert o["n"] == len(kept) == 12
    assert o["pts"] == [p - kept[0] for p in kept]
    assert abs(o["audio"][0][1] - 0.4) < 0.06


def test_audio_reencoded_to_aac_when_mp4_cannot_hold_it(tmp_path):
    synth(tmp_path / "in.mov", n=12, audio=True, acodec="pcm_mulaw")
    assert probe(tmp_path / "in.mov")["audio"][0][0] == "pcm_mulaw"
    translate_video(tmp_path / "in.mov", tmp_path / "out.mp4", Identity())
    o = probe(tmp_path / "out.mp4")
    assert o["audio"][0][0] == "aac" and abs(o["audio"][0][1] - 12 / float(NTSC)) < 0.1
    translate_video(tmp_path / "in.mov", tmp_path / "out.mov", Identity())  # mov holds it: copied
    assert probe(tmp_path / "out.mov")["audio"][0][0] == "pcm_mulaw"


def test_frame_folders_in_and_out(tmp_path):
    synth(tmp_path / "in.mp4", n=10, audio=False)
    translate_video(tmp_path / "in.mp4", tmp_path / "frames", Identity())
    files = sorted((tmp_path / "frames").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(1, 11)]
    translate_video(tmp_path / "frames", tmp_path / "back.mp4", Identity(), fps=10)
    o = probe(tmp_path / "back.mp4")
    assert o["n"] == 10 and o["rate"] == 10 and (o["w"], o["h"]) == (66, 50)


class Exploding(Identity):
    def __init__(self, exc):
        self.exc, self.calls = exc, 0

    def translate_batch(self, frames):
        self.calls += 1
        if self.calls == 2:
            raise self.exc
        return super().translate_batch(frames)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")])
def test_interruption_or_crash_leaves_no_output(tmp_path, exc):
    synth(tmp_path / "in.mp4", n=24, audio=True)
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    with pytest.raises(type(exc)):
        translate_video(tmp_path / "in.mp4", out_dir / "out.mp4", Exploding(exc))
    with pytest.raises(type(exc)):
        translate_video(tmp_path / "in.mp4", out_dir / "frames", Exploding(exc))
    assert list(out_dir.iterdir()) == []


def test_stable_stats_average_within_a_shot_and_restart_at_a_cut():
    net = tiny_generator(3)
    tr = Translator(net, device="cpu", precision="fp32", batch_size=4)  # passes of 4 and 3 frames
    a = pattern(0, 32, 48)
    a2 = a.copy()
    a2[12:20, 18:30] = 250  # same shot, a bright object appears: this frame's own statistics move
    b = (255 - pattern(5, 32, 48)).astype(np.uint8)
    b[..., 2] = 230  # a cut: another picture
    frames = [a, a, a, a2, a2, b, b]
    plain = [tr.translate(f).astype(int) for f in frames]
    stable = StableStats(tr, momentum=0.8)
    with stable:
        out = []
        for i in range(0, len(frames), 4):  # batches of 4 and 3: the average crosses the batch boundary
            out += [o.astype(int) for o in tr.translate_batch(frames[i:i + 4], listener=stable)]
    assert all(n.stats_hook is None for n in tr.model.norms())  # hooks removed on exit
    assert stable.cuts == [False, True, False] and stable.n_cuts == 1
    for i in (0, 1, 2, 5, 6):  # a steady shot averages to its own statistics; a cut starts afresh
        assert np.abs(out[i] - plain[i]).max() <= 1, i
    d3, d4 = np.abs(out[3] - plain[3]).mean(), np.abs(out[4] - plain[4]).mean()
    assert d3 > 1 and d4 < d3  # the change is blended in, then followed


def test_stabilize_reaches_the_norms_the_translator_runs(tmp_path):
    """On CPU bf16 the translator runs its own copy of the model: --stabilize must hook that copy."""
    from PIL import Image

    from cyclebatch.io.images import read_image

    a = pattern(0, 32, 48)
    a2 = a.copy()
    a2[12:20, 18:30] = 250  # one shot; an object appears, so the frame's own statistics move
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate([a, a, a, a2, a2]):
        Image.fromarray(f).save(src / f"{i:03d}.png")
    tr = Translator(tiny_generator(3), device="cpu", precision="bf16")
    outs = {}
    for stabilize in (False, True, "default"):
        kw = {} if stabilize == "default" else {"stabilize": stabilize}
        translate_video(src, tmp_path / f"out{stabilize}", tr, fps=5, **kw)
        outs[stabilize] = [read_image(p).rgb.astype(np.uint8) for p in sorted((tmp_path / f"out{stabilize}").iterdir())]
    first, moved = (np.abs(outs[True][i].astype(int) - outs[False][i]).mean() for i in (0, 3))
    assert first < 1  # a shot's first frame keeps its own statistics (bf16 rounding apart)
    assert moved > 4 and moved > 5 * first  # then the shot's running average, not the frame's own
    # The default is the flow stabiliser on the per-frame translations (not on the shared statistics'):
    stab = FlowStabilizer()
    expected = [stab(f, p) for f, p in zip([a, a, a, a2, a2], outs[False])]
    assert all(np.array_equal(x, y) for x, y in zip(outs["default"], expected))
    assert all(n.stats_hook is None for n in tr.model.norms())


def test_tiled_frames_share_statistics_like_whole_ones(tmp_path):
    """The tiler installs its own whole-frame statistics; they must still go through the shot's average."""
    from PIL import Image

    from cyclebatch.io.images import read_image

    a = pattern(0, 64, 64)
    a2 = a.copy()
    a2[20:40, 20:40] = 250  # one shot; an object appears
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate([a, a, a2, a2]):
        Image.fromarray(f).save(src / f"{i:03d}.png")
    whole = Translator(tiny_generator(3), device="cpu", precision="fp32")
    tiled = Translator(tiny_generator(3), device="cpu", precision="fp32", tile=32, context=16)
    outs = {}
    for name, tr, stabilize in (("whole", whole, True), ("tiled", tiled, True), ("tiled_own", tiled, False)):
        translate_video(src, tmp_path / name, tr, fps=5, stabilize=stabilize)
        outs[name] = [read_image(p).rgb.astype(int) for p in sorted((tmp_path / name).iterdir())]
        assert all(n.stats_hook is None for n in tr.model.norms())
    for w, t in zip(outs["whole"], outs["tiled"]):
        assert np.abs(w - t).max() <= 1  # tiled and stabilised == whole and stabilised, up to rounding
    assert np.abs(outs["tiled"][2] - outs["tiled_own"][2]).mean() > 4  # and not the frame's own statistics


def test_cli_video_with_a_model_file(tmp_path):
    save_generator(tiny_generator(1), tmp_path / "g.safetensors", {})
    synth(tmp_path / "in.mp4", n=12, audio=True)
    r = run_cli("video", tmp_path / "in.mp4", tmp_path / "out.mp4", "--model", tmp_path / "g.safetensors",
                "--crf", "30", "--preset", "ultrafast")
    assert r.returncode == 0, r.stderr
    o = probe(tmp_path / "out.mp4")
    assert o["n"] == 12 and len(o["audio"]) == 1
    assert np.abs(o["first"].astype(int) - pattern(0, 50, 66)).mean() > 10  # the model did change it


def _bad_inputs(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video at all\n" * 50)
    synth(tmp_path / "good.mp4", n=24, audio=True)
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end
    synth(tmp_path / "good.mkv", n=24, audio=True)
    data = (tmp_path / "good.mkv").read_bytes()
    (tmp_path / "truncated.mkv").write_bytes(data[: len(data) // 2])  # opens, decodes half, no error
    with av.open(str(tmp_path / "good.mp4")) as i, \
            av.open(str(tmp_path / "faststart.mp4"), "w", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for p in i.demux():
            if p.dts is not None:
                p.stream = streams[p.stream.index]
                o.mux(p)
    data = (tmp_path / "faststart.mp4").read_bytes()
    (tmp_path / "truncated-faststart.mp4").write_bytes(data[: len(data) // 2])  # index first, data cut
    c = av.open(str(tmp_path / "tone.m4a"), "w")
    a = c.add_stream("aac", rate=44100, layout="mono")
    for k in range(10):
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 44100, k * 1024
        c.mux(a.encode(af))
    c.mux(a.encode())
    c.close()
    return {"notes.mp4": "not a video", "truncated.mp4": "not a video, or one too damaged to open",
            "truncated.mkv": "truncated or corrupt", "truncated-faststart.mp4": "truncated or corrupt: decoded",
            "tone.m4a": "no video stream (an audio-only file)",
            "missing.mp4": "no such file"}


def test_bad_inputs_one_clear_error_nothing_left(tmp_path):
    cases = _bad_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for name, reason in cases.items():
        with pytest.raises(CycleBatchError) as e:
            translate_video(tmp_path / name, out / "x.mp4", Identity())
        msg = str(e.value)
        assert msg.startswith(str(tmp_path / name)) and reason in msg and "\n" not in msg, msg
    assert list(out.iterdir()) == []
    for good in ("good.mkv", "faststart.mp4"):  # the complete files pass the same checks
        assert translate_video(tmp_path / good, out / good, Identity()).frames == 24


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_folder(tmp_path):
    synth(tmp_path / "in.mp4", n=4, audio=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(CycleBatchError, match="cannot write here"):
            translate_video(tmp_path / "in.mp4", ro / "out.mp4", Identity())
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_output_under_a_file_is_not_writable(tmp_path):
    synth(tmp_path / "in.mp4", n=4, audio=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CycleBatchError, match="cannot write here"):
        translate_video(tmp_path / "in.mp4", tmp_path / "afile" / "out.mp4", Identity())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("work", "cbhome")) == ["afile", "in.mp4"]


def test_cli_bad_input_exit_code_and_one_line(tmp_path):
    tmp_path = tmp_path / "t"
    tmp_path.mkdir()
    save_generator(tiny_generator(1), tmp_path / "g.safetensors", {})
    (tmp_path / "notes.mp4").write_text("hello\n" * 100)
    r = run_cli("video", tmp_path / "notes.mp4", tmp_path / "out.mp4", "--model", tmp_path / "g.safetensors")
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "notes.mp4" in lines[0], r.stderr
    assert not (tmp_path / "out.mp4").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors", "notes.mp4"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_interrupt_says_so_and_leaves_nothing(tmp_path, sig):
    save_generator(tiny_generator(1), tmp_path / "g.safetensors", {})
    synth(tmp_path / "in.mp4", n=400, w=128, h=96, audio=True)
    out = tmp_path / "o"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    p = subprocess.Popen([sys.executable, "-m", "cyclebatch", "video", str(tmp_path / "in.mp4"), str(out / "out.mp4"),
                          "-m", str(tmp_path / "g.safetensors"), "--batch-size", "1"],
                         env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(out.iterdir()) and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "finished before it could be interrupted"
    p.send_signal(sig)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in stderr and "out.mp4 was not written" in stderr, stderr
    assert list(out.iterdir()) == []


def test_leftovers_of_a_killed_run_on_the_same_output_are_swept(tmp_path):
    from cyclebatch.io.files import TMP_MARK, writer_identity

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    synth(tmp_path / "in.mp4", n=6, audio=False)
    out = tmp_path / "o"
    out.mkdir()
    me = writer_identity()  # written on this host, in this PID namespace: a dead pid is provably dead
    mine_file = out / f"{TMP_MARK}{dead.pid}@{me}-0123abcd-out.mp4"  # SIGKILL mid-encode left this
    mine_file.write_bytes(b"half a video")
    mine_dir = out / f"{TMP_MARK}{dead.pid}@{me}-0123abcd-frames"  # and this, mid frame folder
    mine_dir.mkdir()
    (mine_dir / "000000.png").write_bytes(b"x")
    live = out / f"{TMP_MARK}{os.getpid()}@{me}-0123abcd-out.mp4"  # a writer still running: not ours to remove
    other = out / f"{TMP_MARK}{dead.pid}@{me}-0123abcd-other.mp4"  # another output's: its writer is dead too, swept
    user = out / "notes-out.mp4"
    for p in (live, other, user):
        p.write_bytes(b"keep")
    tr = Translator(tiny_generator(1), device="cpu", precision="fp32")
    translate_video(tmp_path / "in.mp4", out / "out.mp4", tr)
    translate_video(tmp_path / "in.mp4", out / "frames", tr)
    assert sorted(p.name for p in out.iterdir()) == sorted(["out.mp4", "frames", live.name, user.name])


def test_fps_is_for_frame_folders_only(tmp_path):
    synth(tmp_path / "in.mp4", n=4, audio=False)
    with pytest.raises(CycleBatchError, match="--fps is for a folder of frames"):
        translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity(), fps=10)
    assert not (tmp_path / "out.mp4").exists()


def test_colour_tags_and_matrix_are_kept(tmp_path):
    """BT.709 input (any HD source): decoded with its matrix, re-encoded with it and tagged the same, so a
    player shows the colours it showed before. Untagged BT.601 output would shift a red by ~12 levels."""
    from av.video.reformatter import ColorRange, Colorspace

    colour = np.zeros((48, 64, 3), np.uint8)
    colour[:, :32] = (200, 50, 50)
    colour[:, 32:] = (40, 160, 90)
    with av.open(str(tmp_path / "in.mp4"), "w") as o:
        s = o.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt, s.options = 64, 48, "yuv420p", {"qp": "0"}
        for name in ("colorspace", "color_primaries", "color_trc", "color_range"):
            setattr(s.codec_context, name, 1)  # BT.709, limited range
        for i in range(4):
            vf = av.VideoFrame.from_ndarray(colour, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
            vf.pts = i
            o.mux(s.encode(vf))
        o.mux(s.encode())
    translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity(), crf=0)
    with av.open(str(tmp_path / "out.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, 1)
        f = next(c.decode(video=0))
        as_709 = f.reformat(format="rgb24", src_colorspace=Colorspace.ITU709,
                            src_color_range=ColorRange.MPEG).to_ndarray().astype(int)
    assert np.abs(as_709[8:40, 4:28] - (200, 50, 50)).max() <= 3
    assert np.abs(as_709[8:40, 36:60] - (40, 160, 90)).max() <= 3


def fading(n, h=48, w=64):
    """One shot whose statistics keep moving: the pattern brightens by 2% a frame (no cut anywhere)."""
    return [np.clip(pattern(i, h, w) * (0.55 + 0.02 * i), 0, 255).astype(np.uint8) for i in range(n)]


def encode_frames(path, frames, pts=None):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=NTSC)
        s.width, s.height, s.pix_fmt, s.options = frames[0].shape[1], frames[0].shape[0], "yuv420p", {"qp": "0"}
        s.codec_context.time_base = Fraction(1, 30000)
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = (pts[i] if pts else i * 1001), Fraction(1, 30000)
            c.mux(s.encode(f))
        c.mux(s.encode())


def count_device_conversions(monkeypatch):
    """Counts the frames colour.py converts to RGB (the GPU path), so a test knows that path ran."""
    import cyclebatch.video.colour as colour

    real, frames = colour.yuv420_to_rgb, []

    def counted(yuv, *args):
        frames.append(yuv.shape[0])
        return real(yuv, *args)

    monkeypatch.setattr(colour, "yuv420_to_rgb", counted)
    return frames


def _inject_out_of_memory(tr, after_frames):
    """The translator's forward pass fails for more than 2 frames once `after_frames` went through, half-way
    through the model (the first norms have seen the frames), as a real out-of-memory error would."""
    real, seen = tr._forward, [0]

    def forward(x):
        if x.shape[0] > 2 and seen[0] >= after_frames:
            real.model[:6](x)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        seen[0] += x.shape[0]
        return real(x)

    tr._forward = forward


@pytest.mark.parametrize("on_device", [False, True], ids=["engine", "colour-on-device"])
def test_out_of_memory_mid_video_keeps_every_frame_and_the_shared_statistics(tmp_path, monkeypatch, on_device):
    converted = count_device_conversions(monkeypatch)
    frames = fading(24)
    encode_frames(tmp_path / "in.mp4", frames)
    outs = {}
    for oom, stabilize in ((False, True), (True, True), (False, False)):
        tr = Translator(tiny_generator(3), device="cpu", precision="fp32", batch_size=8)
        if oom:
            _inject_out_of_memory(tr, after_frames=16)  # the third batch of 8, mid-shot, fails at 8 and 4
        out = tmp_path / f"out{oom}{stabilize}.mp4"
        # Lossless (crf 0): x264 at crf 18 is not bitwise repeatable here (the same RGB frames, encoded twice
        # in one process, decoded up to ~40 levels apart in ~1 run of 10), which this comparison would read
        # as lost state.
        res = translate_video(tmp_path / "in.mp4", out, tr, stabilize=stabilize, colour_on_device=on_device, crf=0)
        assert res.frames == 24
        outs[oom, stabilize] = probe_frames(out)
        if oom:
            assert tr.stats.out_of_memory == 2 and tr.auto_batch_size(48, 64) == 2
    (failed, pts), (clean, clean_pts), (own, _) = outs[True, True], outs[False, True], outs[False, False]
    assert pts == clean_pts == [i * 1001 for i in range(24)]  # every frame, same timestamps
    for a, b in zip(failed, clean):
        # Smaller passes take other oneDNN kernels in bf16 (a level here and there, carried by the shared
        # statistics); a lost or doubled state shows as 16-23 levels.
        assert np.abs(a - b).max() <= 6 and np.abs(a - b).mean() < 0.1
    assert np.abs(clean[20] - own[20]).mean() > 3  # and those are shared statistics, not each frame's own
    assert sum(converted) == (24 * 3 + 8 + 4 if on_device else 0)  # the failed passes' frames too


def probe_frames(path):
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        return [f.to_ndarray(format="rgb24").astype(int) for f in frames], [f.pts for f in frames]


def test_stable_stats_abort_restores_the_state_exactly():
    tr = Translator(tiny_generator(3), device="cpu", precision="fp32", batch_size=3)
    frames = fading(6)
    cut = (255 - frames[0]).astype(np.uint8)
    with StableStats(tr) as stable:
        tr.translate_batch(frames[:3], listener=stable)
        before = [(m.clone(), v.clone()) for m, v in stable.state()]
        hist, cuts = stable._last_hist.copy(), stable.n_cuts
        stable.begin([cut] + frames[3:5])  # a pass with cuts in it (there and back) runs out of memory
        with torch.inference_mode():
            tr.model(tr.model_input(tr.to_tensor([cut] + frames[3:5])))
        assert stable.n_cuts > cuts and not torch.equal(stable.state()[0][0], before[0][0])
        stable.abort()
        assert stable.n_cuts == cuts and np.array_equal(stable._last_hist, hist)
        for (m, v), (m0, v0) in zip(stable.state(), before):
            assert torch.equal(m, m0) and torch.equal(v, v0)
        after_abort = tr.translate_batch(frames[3:6], listener=stable)
    with StableStats(tr) as fresh:
        tr.translate_batch(frames[:3], listener=fresh)
        clean = tr.translate_batch(frames[3:6], listener=fresh)
    assert all(np.array_equal(a, b) for a, b in zip(after_abort, clean))


def test_compiled_generator_with_shared_statistics_compiles_once():
    """The statistics' Python state must not reach dynamo's guards: one graph for every pass of one shape,
    whatever the cuts, and for a second video's StableStats too. Outputs equal eager ones."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    frames = fading(12, 32, 48)
    frames[5] = (255 - frames[5]).astype(np.uint8)  # cuts inside a pass (at 5, and back at 6)
    batches = [frames[i:i + 2] for i in range(0, 12, 2)]
    net, reference = tiny_generator(3, n_blocks=1), tiny_generator(3, n_blocks=1)  # compiles in less time
    compiled = torch.compile(net, dynamic=False)
    # NCHW (as on a GPU). On CPU, channels_last input takes networks.instance_stats's batch_norm_update_stats
    # path, whose in-place update torch.compile drops (a separate bug, outside the video code).
    x = [(torch.from_numpy(np.stack(b)).permute(0, 3, 1, 2).float() / 127.5 - 1).contiguous() for b in batches]
    graphs = []
    with torch.inference_mode():
        for video in range(2):
            with StableStats(net) as stable, StableStats(reference) as eager:
                for i, b in enumerate(batches):
                    stable.begin(b)
                    eager.begin(b)
                    y = compiled(x[i])
                    graphs.append(counters["stats"]["unique_graphs"])
                    assert (y - reference(x[i])).abs().max() < 1e-3, (video, i)
            assert stable.cuts == eager.cuts and stable.n_cuts == eager.n_cuts >= 2
    assert graphs == [1] * 12


def test_cli_video_compile_compiles_once_for_the_whole_video(tmp_path, monkeypatch):
    """`video --compile`: the generator is compiled, and a video whose last batch is shorter still runs one
    graph (the batch is padded), every frame kept. Dynamo's graphs counted, inductor's code generation
    skipped (backend "eager") to keep the test fast: the graphs are dynamo's either way."""
    import functools
    import signal

    from torch._dynamo.utils import counters
    from typer.testing import CliRunner

    from cyclebatch.cli.app import app

    save_generator(tiny_generator(1), tmp_path / "g.safetensors", {})
    pts = synth(tmp_path / "in.mp4", n=10, w=48, h=32, audio=False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        r = CliRunner().invoke(app, ["video", str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), "-m",
                                     str(tmp_path / "g.safetensors"), "--device", "cpu", "--precision", "fp32",
                                     "--batch-size", "4", "--compile", "-q"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert r.exit_code == 0, r.output
    assert counters["stats"]["unique_graphs"] == 1  # batches of 4, 4 and 2 (padded to 4)
    o = probe(tmp_path / "out.mp4")
    assert o["n"] == 10 and o["pts"] == pts


CLIP = ROOT / "examples" / "clip.mp4"


@pytest.mark.parametrize("matrix,full", [(2, False), (1, False), (5, False), (5, True)],
                         ids=["untagged", "bt709", "bt601", "bt601-full"])
def test_colour_conversion_on_torch_matches_ffmpeg(matrix, full):
    """colour.py against FFmpeg's own conversions (swscale, as the CPU path runs them) on real frames, both
    ways: YUV -> RGB within 2 levels, RGB -> YUV 4:2:0 within 1 on every plane."""
    from av.video.reformatter import ColorRange, Colorspace

    from cyclebatch.video.colour import rgb_to_yuv420, yuv420_to_rgb

    space = {2: None, 1: Colorspace.ITU709, 5: Colorspace.ITU601}[matrix]
    rng = ColorRange.JPEG if full else ColorRange.MPEG
    with av.open(str(CLIP)) as c:
        frames = [f for i, f in zip(range(48), c.decode(video=0)) if i % 16 == 0]
    for f in frames:
        planes = f.to_ndarray()
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        ffmpeg_rgb = frame.reformat(format="rgb24", src_colorspace=space, src_color_range=rng).to_ndarray()
        ours = yuv420_to_rgb(torch.from_numpy(planes)[None], matrix, full)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ffmpeg_rgb).max() <= 2
        ffmpeg_yuv = av.VideoFrame.from_ndarray(ffmpeg_rgb, format="rgb24").reformat(
            format="yuv420p", dst_colorspace=space, dst_color_range=rng).to_ndarray().astype(int)
        ours = rgb_to_yuv420(torch.from_numpy(ffmpeg_rgb).permute(2, 0, 1)[None].float(), matrix, full)[0]
        assert np.abs(ours.numpy().astype(int) - ffmpeg_yuv).max() <= 1


def tagged_bt709(path, n=8, rotation=None):
    """Real frames of the example clip, encoded as BT.709 (tagged, converted with that matrix)."""
    from av.video.reformatter import ColorRange, Colorspace

    with av.open(str(CLIP)) as c:
        rgb = [f.to_ndarray(format="rgb24")[:96, :128] for _, f in zip(range(n), c.decode(video=0))]
    with av.open(str(path), "w") as o:
        s = o.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt, s.options = 128, 96, "yuv420p", {"qp": "0"}
        if rotation:
            s.width, s.height = 96, 128
            s.set_display_rotation(rotation)
        for name in ("colorspace", "color_primaries", "color_trc", "color_range"):
            setattr(s.codec_context, name, 1)
        for i, img in enumerate(rgb):
            if rotation:
                img = np.ascontiguousarray(np.rot90(img, k=-rotation // 90))
            vf = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
            vf.pts = i
            o.mux(s.encode(vf))
        o.mux(s.encode())


@pytest.mark.parametrize("case", ["clip", "bt709", "bt709-rotated", "frames-out"])
def test_colour_on_device_matches_ffmpeg_conversions(tmp_path, monkeypatch, case):
    """The GPU path (colour.py on the translator's device, here the CPU) gives the output the FFmpeg path
    gives: same frames and timestamps, pictures within conversion rounding, upright, same tags."""
    from PIL import Image

    src = CLIP
    if case.startswith("bt709"):
        src = tmp_path / "in.mp4"
        tagged_bt709(src, rotation=90 if case.endswith("rotated") else None)
    outs, converted = {}, count_device_conversions(monkeypatch)
    for on_device in (False, True):
        tr = Translator(tiny_generator(3), device="cpu", precision="fp32", batch_size=4)
        dst = tmp_path / (f"out{on_device}" + ("" if case == "frames-out" else ".mp4"))
        res = translate_video(src, dst, tr, duration=0.15, crf=0, colour_on_device=on_device, temporal="stats")
        assert res.frames == 4
        if case == "frames-out":
            outs[on_device] = [np.asarray(Image.open(p)).astype(int) for p in sorted(dst.iterdir())], None
        else:
            outs[on_device] = probe_frames(dst)
            with av.open(str(dst)) as c:
                cc = c.streams.video[0].codec_context
                outs[on_device] += ((cc.colorspace, cc.color_range),)
    (ffmpeg, pts, *tags), (ours, our_pts, *our_tags) = outs[False], outs[True]
    assert sum(converted) == 4  # the frames went through colour.py, not FFmpeg
    assert len(ours) == len(ffmpeg) == 4 and our_pts == pts and our_tags == tags
    if case == "bt709-rotated":
        assert ours[0].shape[:2] == (96, 128)  # stored 96 wide, 128 high: shown and written upright
    for a, b in zip(ours, ffmpeg):  # the model doubles the conversions' level or two here and there
        # (a wrong matrix: mean 3.6, 99th percentile 17; U and V swapped: 9 and 50)
        assert a.shape == b.shape and np.abs(a - b).mean() < 1 and np.percentile(np.abs(a - b), 99) <= 4


def _nvenc_opens() -> bool:
    cc = av.CodecContext.create("h264_nvenc", "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base = 256, 256, "yuv420p", Fraction(1, 25)
    try:
        cc.open()
        return True
    except Exception:
        return False


@pytest.mark.skipif("h264_nvenc" not in av.codecs_available, reason="this FFmpeg has no NVENC")
def test_nvenc_without_a_gpu_is_one_clear_error_before_any_work(tmp_path):
    if _nvenc_opens():
        pytest.skip("NVENC works on this machine")
    synth(tmp_path / "in.mp4", n=6, audio=False)
    out = tmp_path / "o"
    out.mkdir()
    calls = []

    class Counting(Identity):
        def translate_batch(self, frames):
            calls.append(len(frames))
            return super().translate_batch(frames)

    with pytest.raises(CycleBatchError) as e:
        translate_video(tmp_path / "in.mp4", out / "out.mp4", Counting(), codec="h264_nvenc")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(out / "out.mp4")) and "h264_nvenc" in msg
    assert "NVIDIA" in msg and "--codec libx264" in msg and "avcodec_open2" not in msg, msg
    assert calls == [] and list(out.iterdir()) == []  # found before any frame was translated; nothing left


def test_unknown_encoder_names_the_ones_there_are(tmp_path):
    synth(tmp_path / "in.mp4", n=4, audio=False)
    with pytest.raises(CycleBatchError, match=r"no 'h264_bogus' video encoder \(available: libx264"):
        translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity(), codec="h264_bogus")
    assert not (tmp_path / "out.mp4").exists()


def test_nvenc_options_follow_crf_and_preset():
    from cyclebatch.video.api import encoder_options

    x264 = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
    levels = [int(encoder_options("h264_nvenc", 20, p)["preset"][1:]) for p in x264]
    assert levels == sorted(levels) and levels[0] == 1 and levels[-1] == 7 and levels[5] == 4  # medium = p4
    assert encoder_options("hevc_nvenc", 20, "p6")["preset"] == "p6"
    opts = encoder_options("h264_nvenc", 23, "medium")
    assert opts["cq"] == "23" and opts["rc"] == "vbr" and opts["b"] == "0"  # quality-driven, no bitrate cap
    assert encoder_options("h264_nvenc", 63, "medium")["cq"] == "51"  # nvenc's scale ends at 51
    assert encoder_options("h264_nvenc", 0, "slow") == {"preset": "p5", "tune": "lossless"}  # cq 0 is "auto"
    assert encoder_options("libx264", 18, "slow") == {"crf": "18", "preset": "slow"}
    with pytest.raises(CycleBatchError, match="--preset turbo: not a preset for h264_nvenc"):
        encoder_options("h264_nvenc", 18, "turbo")


def test_statistics_that_overflowed_restart_at_the_next_cut():
    """fp16 can overflow a pass's statistics to inf/NaN; a cut must start afresh, not carry the NaN on."""
    tr = Translator(tiny_generator(3), device="cpu", precision="fp32", batch_size=2)
    a = fading(2)
    b = (255 - a[0]).astype(np.uint8)
    with StableStats(tr) as stable:
        tr.translate_batch(a, listener=stable)
        for h in stable.hooks:  # what an overflowed pass leaves behind
            h.state = (torch.full_like(h.state[0], float("nan")), torch.full_like(h.state[1], float("inf")))
        out = tr.translate_batch([b, b], listener=stable)
    assert stable.cuts == [True, False]
    own = tr.translate(b).astype(int)
    assert all(np.abs(o.astype(int) - own).max() <= 1 for o in out)


def test_an_interrupt_whose_exception_was_swallowed_still_stops_the_run(tmp_path, monkeypatch):
    # A KeyboardInterrupt raised inside a C library's callback can be reported as "ignored" and lost; the
    # handler's note of it stops the run at the next batch, with nothing written.
    import cyclebatch.errors as errors

    synth(tmp_path / "in.mp4", n=24, audio=False)
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    monkeypatch.setattr(errors, "_interrupted", threading.Event())
    errors.note_interrupt()  # as the CLI's signal handler does, its exception lost on the way
    tr = Translator(tiny_generator(1), device="cpu", precision="fp32", batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        translate_video(tmp_path / "in.mp4", out_dir / "out.mp4", tr)
    assert list(out_dir.iterdir()) == []
