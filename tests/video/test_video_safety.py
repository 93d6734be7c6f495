"""`cyclebatch video` as a hostile user meets it (issue 28): existing outputs, truncated clips, audio a container
cannot hold, animated GIFs, files that are not videos, a full disk, dead temporaries. Tiny frames, few of them."""

import os
import re
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from cyclebatch.models.checkpoints import save_generator
from cyclebatch.errors import CycleBatchError
from cyclebatch.io.files import TMP_MARK, writer_identity
from cyclebatch.video.api import translate_video
from conftest import run_cli, tiny_generator
from test_video import Identity, _bad_inputs, pattern, probe, synth

MISSING_MODEL = "/nonexistent/model.safetensors"  # a check made after the model loads would name this instead


def one_error_line(r, *needles):
    """Exit code 1, exactly one stderr line, `error: ...` naming each needle, no traceback."""
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr and all(n in lines[0] for n in needles), r.stderr
    return lines[0]


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "g.safetensors"
    save_generator(tiny_generator(1), path, {})
    return path


# ---------------------------------------------------------------- 1. existing outputs

def test_existing_output_and_compare_are_refused_before_the_model_loads(tmp_path):
    synth(tmp_path / "in.mp4", n=6, audio=False)
    precious = tmp_path / "p.mp4"
    precious.write_text("precious")
    r = run_cli("video", tmp_path / "in.mp4", precious, "-m", MISSING_MODEL)
    one_error_line(r, str(precious), "exists; pass --overwrite to replace it")
    r = run_cli("video", tmp_path / "in.mp4", tmp_path / "new.mp4", "--compare", precious, "-m", MISSING_MODEL)
    one_error_line(r, str(precious), "--overwrite")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "000001.png").write_bytes(b"an earlier frame")
    r = run_cli("video", tmp_path / "in.mp4", frames, "-m", MISSING_MODEL)
    one_error_line(r, str(frames), "--overwrite")
    assert precious.read_text() == "precious" and (frames / "000001.png").read_bytes() == b"an earlier frame"
    assert not (tmp_path / "new.mp4").exists()


def test_overwrite_replaces_a_video_and_a_folder_of_frames(tmp_path, model):
    synth(tmp_path / "in.mp4", n=6, audio=False)
    old, frames = tmp_path / "old.mp4", tmp_path / "frames"
    old.write_text("old")
    frames.mkdir()
    for i in range(1, 10):  # more frames than the new video has: none of the old ones may stay
        (frames / f"{i:06d}.png").write_bytes(b"old frame")
    r = run_cli("video", tmp_path / "in.mp4", old, "-m", model, "--compare", frames, "--overwrite", "-q")
    assert r.returncode == 0, r.stderr
    assert probe(old)["n"] == 6 and sorted(p.name for p in frames.iterdir()) == [f"{i:06d}.png" for i in range(1, 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.mp4", "old.mp4", "frames", "g.safetensors",
                                                                 "work", "cbhome"])


def test_overwrite_never_empties_a_folder_of_other_files(tmp_path):
    synth(tmp_path / "in.mp4", n=4, audio=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "000001.png").write_bytes(b"x")
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(CycleBatchError, match="holds more than frames.*thesis.tex"):
        translate_video(tmp_path / "in.mp4", home, Identity(), overwrite=True)
    assert sorted(p.name for p in home.iterdir()) == ["000001.png", "thesis.tex"]


class FailsAfter(Identity):
    def __init__(self, n):
        self.left = n

    def translate_batch(self, frames):
        self.left -= len(frames)
        if self.left < 0:
            raise RuntimeError("the model failed midway")
        return super().translate_batch(frames)


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path):
    synth(tmp_path / "in.mp4", n=12, audio=False)
    old, frames = tmp_path / "old.mp4", tmp_path / "frames"
    old.write_text("old")
    frames.mkdir()
    (frames / "000001.png").write_bytes(b"old frame")
    for out in (old, frames):
        with pytest.raises(RuntimeError):
            translate_video(tmp_path / "in.mp4", out, FailsAfter(4), overwrite=True)
    assert old.read_text() == "old" and [p.name for p in frames.iterdir()] == ["000001.png"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("work", "cbhome")) == \
        ["frames", "in.mp4", "old.mp4"]


# ---------------------------------------------------------------- 3. clips of truncated videos

def test_every_clip_of_a_truncated_video_reports_what_it_could_not_decode(tmp_path):
    _bad_inputs(tmp_path)  # 24 frames at 29.97 fps, 0.80 s; the truncated copies decode about half
    out = tmp_path / "out"
    out.mkdir()
    for name in ("truncated.mkv", "truncated-faststart.mp4"):
        for start, duration in ((0, 0.6), (0.2, 0.3), (0.3, None), (0.3, 5.0), (0.6, 0.15)):
            with pytest.raises(CycleBatchError, match="truncated or corrupt") as e:
                translate_video(tmp_path / name, out / "x.mp4", Identity(), start=start, duration=duration)
            assert str(e.value).startswith(str(tmp_path / name)) and "\n" not in str(e.value)
    assert list(out.iterdir()) == []


def test_clips_that_end_at_the_real_end_of_a_healthy_video_pass(tmp_path):
    _bad_inputs(tmp_path)
    pts = synth(tmp_path / "vfr.mp4", n=21, audio=False, vfr=True)
    for name, n in (("good.mkv", 24), ("faststart.mp4", 24), ("vfr.mp4", 21)):
        end = 0.80 if n == 24 else pts[-1] / 30000 + 0.1
        for start, duration in ((0, None), (0.3, None), (0.5, 5.0), (0.2, end - 0.2), (0.7, None)):
            res = translate_video(tmp_path / name, tmp_path / f"o-{name}-{start}-{duration}.mp4", Identity(),
                                  start=start, duration=duration, temporal="off")
            assert res.frames >= 1
    with pytest.raises(CycleBatchError, match=r"--start 2 is at or past the video's last frame \(0.80 s\)"):
        translate_video(tmp_path / "good.mkv", tmp_path / "late.mp4", Identity(), start=2)


def test_cli_truncated_clip_is_one_line_exit_1(tmp_path, model):
    _bad_inputs(tmp_path)
    r = run_cli("video", tmp_path / "truncated.mkv", tmp_path / "o.mp4", "-m", model, "--start", "0.1",
                "--duration", "0.6")
    one_error_line(r, str(tmp_path / "truncated.mkv"), "truncated or corrupt: decoded")
    assert not (tmp_path / "o.mp4").exists()


# ---------------------------------------------------------------- 4. audio the container cannot hold

def clip_with_audio(path, acodec, n=8, w=32, h=24, rate=48000):
    """`n` frames at 25 fps with a tone in `acodec`, in a Matroska file (which holds them all)."""
    c = av.open(str(path), "w")
    v = c.add_stream("libx264", rate=25)
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    a = c.add_stream(acodec, rate=rate, layout="mono")
    fmt = a.codec_context.codec.audio_formats[0].name if a.codec_context.codec.audio_formats else "fltp"
    a.codec_context.format = fmt
    a.codec_context.open()
    for i in range(n):
        f = av.VideoFrame.from_ndarray(pattern(i, h, w), format="rgb24")
        f.pts = i
        c.mux(v.encode(f))
    c.mux(v.encode())
    size, total = a.codec_context.frame_size or 1024, rate * n // 25
    resample = av.AudioResampler(format=fmt, layout="mono", rate=rate)
    for s0 in range(0, total, size):
        tone = (0.3 * np.sin(2 * np.pi * 440 * (s0 + np.arange(min(size, total - s0))) / rate)).astype(np.float32)
        af = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
        af.sample_rate = rate
        af = resample.resample(af)[0]
        af.pts, af.time_base = s0, Fraction(1, rate)
        c.mux(a.encode(af))
    c.mux(a.encode())
    c.close()


# What each container may carry (by codec name as read back: MP3 decodes as mp3float).
HOLDS = {".mp4": {"aac", "mp3float", "opus", "pcm_s16le", "flac"}, ".mkv": {"aac", "mp3float", "opus", "pcm_s16le", "flac"},
         ".mov": {"aac", "mp3float", "pcm_s16le", "flac"}, ".webm": {"opus", "vorbis"},
         ".avi": {"aac", "mp3float", "pcm_s16le", "flac"}}


def test_audio_of_every_codec_goes_into_every_container(tmp_path):
    made = []
    for acodec in ("aac", "libmp3lame", "libopus", "pcm_s16le", "flac", "libvorbis"):
        try:
            clip_with_audio(tmp_path / f"{acodec}.mkv", acodec)
            made.append(acodec)
        except (av.FFmpegError, ValueError):
            continue  # not encodable in this FFmpeg (libvorbis here): nothing to test with
    assert {"aac", "libmp3lame", "libopus", "pcm_s16le"} <= set(made)
    for acodec in made:
        for suffix, holds in HOLDS.items():
            out = tmp_path / f"out-{acodec}{suffix}"
            translate_video(tmp_path / f"{acodec}.mkv", out, Identity(), temporal="off",
                            codec="libvpx-vp9" if suffix == ".webm" else "libx264")
            o = probe(out)
            assert o["n"] == 8 and len(o["audio"]) == 1, (acodec, suffix)
            codec, seconds = o["audio"][0]
            assert codec in holds, (acodec, suffix, codec)
            assert seconds is None or abs(seconds - 8 / 25) < 0.15, (acodec, suffix, seconds)


def test_cli_audio_into_containers_that_cannot_take_it_no_traceback(tmp_path, model):
    clip_with_audio(tmp_path / "opus.mkv", "libopus")
    clip_with_audio(tmp_path / "aac.mkv", "aac")
    for src, out, codec in (("opus.mkv", "o.mov", "aac"), ("aac.mkv", "o.webm", "opus")):
        r = run_cli("video", tmp_path / src, tmp_path / out, "-m", model, "-q")  # .webm: VP9 without asking
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert probe(tmp_path / out)["audio"][0][0] == codec


def test_audio_a_container_cannot_hold_at_all_is_left_out_with_a_note(tmp_path):
    clip_with_audio(tmp_path / "aac.mkv", "aac")
    notes = []
    translate_video(tmp_path / "aac.mkv", tmp_path / "o.gif", Identity(), notify=notes.append)
    assert len(notes) == 1 and "audio stream" in notes[0] and "left out" in notes[0] and "o.gif" in notes[0]


# ---------------------------------------------------------------- 8c. animated GIFs

def gif_frames(path):
    with Image.open(path) as im:
        out = []
        for k in range(im.n_frames):
            im.seek(k)
            out.append((np.asarray(im.convert("RGB")).astype(int), im.info.get("duration")))
        return out, im.info.get("loop")


def test_animated_gif_in_and_out_keeps_timing_and_loop(tmp_path):
    durations = [100, 50, 200, 50, 100, 300]  # ms; GIF counts in 1/100 s
    frames = [Image.fromarray(pattern(i * 9, 40, 52)) for i in range(6)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=durations, loop=3)
    translate_video(tmp_path / "anim.gif", tmp_path / "out.gif", Identity())
    got, loop = gif_frames(tmp_path / "out.gif")
    want, _ = gif_frames(tmp_path / "anim.gif")
    assert loop == 3 and len(got) == 6
    assert [d for _, d in got[:-1]] == durations[:-1]  # the last frame's delay is the muxer's
    assert all(np.abs(g - w).mean() < 3 for (g, _), (w, _) in zip(got, want))  # the colours survive
    translate_video(tmp_path / "anim.gif", tmp_path / "out.mp4", Identity())
    o = probe(tmp_path / "out.mp4")
    assert o["n"] == 6 and [round(float(p * o["tb"]), 3) for p in o["pts"]] == [0, 0.1, 0.15, 0.35, 0.4, 0.5]
    synth(tmp_path / "in.mp4", n=12, audio=False)  # 29.97 fps: 3.3 cs a frame
    translate_video(tmp_path / "in.mp4", tmp_path / "from-mp4.gif", Identity())
    got, loop = gif_frames(tmp_path / "from-mp4.gif")
    assert len(got) == 12 and loop == 0 and all(d in (30, 40) for _, d in got[:-1])
    assert np.abs(got[0][0] - pattern(0, 50, 66)).mean() < 6


def test_cli_gif_to_gif(tmp_path, model):
    frames = [Image.fromarray(pattern(i * 9, 40, 52)) for i in range(4)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=80, loop=0)
    r = run_cli("video", tmp_path / "anim.gif", tmp_path / "out.gif", "-m", model, "-q")
    assert r.returncode == 0, r.stderr
    assert len(gif_frames(tmp_path / "out.gif")[0]) == 4


# ---------------------------------------------------------------- 12. not a video, said at once

def test_not_a_video_is_said_before_the_model_loads(tmp_path):
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(6).integers(0, 256, 200_000, np.uint8).tobytes())
    assert av.open(str(tmp_path / "random.mp4")).format.name == "h263"  # FFmpeg "opens" these bytes
    (tmp_path / "urandom.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, np.uint8).tobytes())
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mov").write_text("a text file\n" * 20)
    Image.fromarray(pattern(0, 20, 20)).save(tmp_path / "photo.png")
    os.rename(tmp_path / "photo.png", tmp_path / "photo.mp4")
    Image.fromarray(pattern(0, 20, 20)).save(tmp_path / "photo.jpg")
    os.rename(tmp_path / "photo.jpg", tmp_path / "photo.mkv")
    for name in ("random.mp4", "urandom.mp4", "empty.mp4", "notes.mov", "photo.mp4", "photo.mkv"):
        r = run_cli("video", tmp_path / name, tmp_path / "out.mp4", "-m", MISSING_MODEL)
        one_error_line(r, str(tmp_path / name), "not a video")
    assert not (tmp_path / "out.mp4").exists()


def test_video_failures_are_one_line_with_the_true_exit_code(tmp_path, model):
    synth(tmp_path / "in.mp4", n=4, audio=False)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "nothing").mkdir()
    cases = [((tmp_path / "missing.mp4", tmp_path / "o.mp4"), "no such file"),
             ((tmp_path / "nothing", tmp_path / "o.mp4"), "a folder without images"),
             ((tmp_path / "in.mp4", tmp_path / "o.mp4", "--start", "9"), "past the video's last frame"),
             ((tmp_path / "in.mp4", tmp_path / "o.webm", "--codec", "libx264"), "cannot hold libx264"),
             ((tmp_path / "in.mp4", tmp_path / "afile" / "o.mp4"), "cannot write here"),
             ((tmp_path / "in.mp4", tmp_path / "in.mp4", "--overwrite"), "would overwrite the input")]
    for args, reason in cases:
        one_error_line(run_cli("video", *args, "-m", model), reason)


# ---------------------------------------------------------------- 8a. disk full

@pytest.fixture
def tiny_disk(tmp_path):
    """A 320 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


class Noise(Identity):
    """Incompressible frames: a lossless encode of a few of them fills the tiny disk."""

    def translate_batch(self, frames):
        rng = np.random.default_rng(len(frames))
        return [rng.integers(0, 256, f.shape, np.uint8) for f in frames]


def test_disk_full_reports_the_space_free_when_the_write_failed(tmp_path, tiny_disk):
    synth(tmp_path / "in.mp4", n=24, w=160, h=120, audio=False)
    for out in (tiny_disk / "out.mp4", tiny_disk / "frames"):
        with pytest.raises(CycleBatchError) as e:
            translate_video(tmp_path / "in.mp4", out, Noise(), crf=0, temporal="off")
        msg = str(e.value)
        assert f"cannot write {out}: the disk is full" in msg and f"{out} was not written" in msg, msg
        free = float(re.search(r"([\d.,]+) MiB free there when the write failed", msg).group(1))
        assert free < 0.1, msg  # after the partial output is removed there are ~0.3 MiB again
        assert list(tiny_disk.iterdir()) == []


# ---------------------------------------------------------------- 8b. dead temporaries

def test_dead_temporaries_beside_the_output_are_swept_at_the_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    synth(tmp_path / "in.mp4", n=4, audio=False)
    out = tmp_path / "o"
    me = writer_identity()  # written on this host and PID namespace: a dead pid there is provably dead
    (out / "sub").mkdir(parents=True)
    killed = out / f"{TMP_MARK}{dead.pid}@{me}-0123abcd-yesterday.mp4"  # a video killed while writing another name
    killed.write_bytes(b"half a video")
    killed_frames = out / f"{TMP_MARK}{dead.pid}@{me}-0123abcd-frames"
    killed_frames.mkdir()
    (killed_frames / "000001.png").write_bytes(b"x")
    live = out / f"{TMP_MARK}{os.getpid()}@{me}-0123abcd-now.mp4"  # a writer still running
    below = out / "sub" / f"{TMP_MARK}{dead.pid}@{me}-0123abcd-deep.mp4"  # only the output's own folder is swept
    for p in (live, below, out / "mine.mp4"):
        p.write_bytes(b"keep")
    translate_video(tmp_path / "in.mp4", out / "today.mp4", Identity())
    assert sorted(p.name for p in out.iterdir()) == sorted(["today.mp4", "sub", live.name, "mine.mp4"])
    assert below.exists()


def test_without_codec_each_container_gets_a_video_codec_it_holds(tmp_path):
    synth(tmp_path / "in.mp4", n=4, audio=True)
    for suffix, codec in ((".webm", "vp9"), (".ts", "h264"), (".gif", "gif"), (".mkv", "h264"), (".avi", "h264")):
        translate_video(tmp_path / "in.mp4", tmp_path / f"out{suffix}", Identity())
        assert probe(tmp_path / f"out{suffix}")["codec"] == codec, suffix


def test_overwrite_never_replaces_a_device_or_a_fifo(tmp_path):
    synth(tmp_path / "in.mp4", n=4, audio=False)
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(CycleBatchError, match="not a regular file"):
        translate_video(tmp_path / "in.mp4", fifo, Identity(), overwrite=True)
    assert fifo.is_fifo()
