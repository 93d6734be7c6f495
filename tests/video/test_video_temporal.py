"""`cyclebatch video` with --temporal, --compare, --max-size / --scale / --upscale: the stabiliser through the
real pipeline, each temporal mode against `run`, the side-by-side output, working sizes."""

import av
import numpy as np
import pytest
from PIL import Image

from cyclebatch.models.checkpoints import save_generator
from cyclebatch.errors import CycleBatchError
from cyclebatch.io.images import read_image
from cyclebatch.video.temporal import FlowStabilizer
from cyclebatch.video.api import translate_video
from conftest import run_cli, tiny_generator
from test_temporal import H, SIDE, TOP, W, clip, frame_flicker
from test_video import Exploding, Identity, pattern, probe, synth


class Lookup(Identity):
    """A stand-in translator that answers each input frame with its given per-frame translation (found by
    its bytes): what a flickering CycleGAN would give, exactly, through the real pipeline."""

    def __init__(self, frames, per_frame):
        self.table = {f.tobytes(): p for f, p in zip(frames, per_frame)}

    def translate_batch(self, frames):
        return [self.table[f.tobytes()].copy() for f in frames]


def save_frames(folder, frames):
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:04d}.png")
    return folder


def load_frames(folder):
    return [read_image(p).rgb for p in sorted(folder.iterdir())]


def test_synthetic_clip_through_the_pipeline_no_trail_and_no_flicker(tmp_path):
    """The issue's test, through translate_video: an object crossing a textured, flickering background."""
    frames, per_frame, masks = clip(n=20)
    src = save_frames(tmp_path / "in", frames)
    res = translate_video(src, tmp_path / "out", Lookup(frames, per_frame), fps=10)
    out = load_frames(tmp_path / "out")
    assert res.temporal == "flow" and len(out) == 20
    # The pipeline runs the stabiliser, not a copy of it: the same frames as the class run by hand.
    stab = FlowStabilizer()
    assert all(np.array_equal(o, stab(f, p)) for o, f, p in zip(out, frames, per_frame))
    away = np.zeros((H, W), bool)
    away[4:TOP - 8, 4:-4] = away[TOP + SIDE + 8:-4, 4:-4] = True
    assert frame_flicker(out, frames, away) < frame_flicker(per_frame, frames, away) / 10
    for t in range(3, 20):  # where the object was a frame ago: the current translation, no trail
        behind = masks[t - 1] & ~masks[t]
        assert np.abs(out[t].astype(np.float32) - per_frame[t]).max(axis=2)[behind].mean() < 10
    off = translate_video(src, tmp_path / "off", Lookup(frames, per_frame), fps=10, temporal="off")
    assert off.temporal == "off" and all(np.array_equal(a, b) for a, b in zip(load_frames(tmp_path / "off"), per_frame))


def test_stabiliser_state_is_flat_in_the_video_length(tmp_path):
    frames, per_frame, _ = clip(n=28)
    states = []
    for n in (6, 28):
        src = save_frames(tmp_path / f"in{n}", frames[:n])
        res = translate_video(src, tmp_path / f"out{n}.mp4", Lookup(frames, per_frame), fps=10)
        assert res.frames == n
        states.append(res.state_bytes)
    assert states[0] == states[1] > 0
    assert states[1] < 3 * H * W * (1 + 4) + 2 * H * W * 4 * 2 + 4096  # one frame's worth, no more


def test_cli_temporal_modes_and_the_alias_against_run(tmp_path):
    """off and --no-stabilize give, bit for bit at fp32, what `run` gives each extracted frame; flow is the
    stabiliser on exactly those; stats differs from both."""
    save_generator(tiny_generator(1), tmp_path / "g.safetensors", {})
    frames = [pattern(i, 40, 56) for i in range(6)]
    frames[3][10:20, 20:30] = 250  # an object appears: the shared statistics move away from the frame's own
    frames[4][10:20, 20:30] = 250
    src = save_frames(tmp_path / "in", frames)
    common = ["--model", tmp_path / "g.safetensors", "--precision", "fp32", "--device", "cpu", "--batch-size", "1", "-q"]
    r = run_cli("run", src, "-o", tmp_path / "run", *common)
    assert r.returncode == 0, r.stderr
    per_frame = load_frames(tmp_path / "run")
    outs = {}
    for name, flags in {"off": ["--temporal", "off"], "alias": ["--no-stabilize"], "stats": ["--temporal", "stats"],
                        "default": []}.items():
        r = run_cli("video", src, tmp_path / name, *common, *flags)
        assert r.returncode == 0, r.stderr
        outs[name] = load_frames(tmp_path / name)
    assert all(np.array_equal(a, b) for a, b in zip(outs["off"], per_frame)) and len(outs["off"]) == 6
    assert all(np.array_equal(a, b) for a, b in zip(outs["alias"], per_frame))
    stab = FlowStabilizer()
    assert all(np.array_equal(o, stab(f, p)) for o, f, p in zip(outs["default"], frames, per_frame))
    assert np.abs(outs["stats"][4].astype(int) - per_frame[4]).mean() > 1
    r = run_cli("video", src, tmp_path / "x", "--no-stabilize", "--temporal", "flow", *common)
    assert r.returncode == 1 and "--no-stabilize" in r.stderr and not (tmp_path / "x").exists()
    r = run_cli("video", src, tmp_path / "y", "--temporal", "wobble", *common)
    assert r.returncode == 1 and "--temporal wobble" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compare_writes_three_panels(tmp_path):
    frames, per_frame, _ = clip(n=8)
    src = save_frames(tmp_path / "in", frames)
    translate_video(src, tmp_path / "out", Lookup(frames, per_frame), fps=10, compare=tmp_path / "cmp")
    out, panels = load_frames(tmp_path / "out"), load_frames(tmp_path / "cmp")
    assert len(panels) == 8 and panels[0].shape == (H, 3 * W, 3)
    for f, p, o, c in zip(frames, per_frame, out, panels):
        assert np.array_equal(c[:, :W], f) and np.array_equal(c[:, W:2 * W], p) and np.array_equal(c[:, 2 * W:], o)
    assert not np.array_equal(panels[5][:, W:2 * W], panels[5][:, 2 * W:])  # stabilised != per-frame
    with pytest.raises(CycleBatchError, match="overwrite"):
        translate_video(src, tmp_path / "o2", Identity(), fps=10, compare=tmp_path / "o2")
    with pytest.raises(RuntimeError):  # a crash mid-video leaves neither output, nor a temporary file
        translate_video(src, tmp_path / "o3.mp4", Exploding(RuntimeError("boom")), fps=10, compare=tmp_path / "c3.mp4")
    left = [p.name for p in tmp_path.iterdir()]
    assert "o3.mp4" not in left and "c3.mp4" not in left and not any(".cyclebatch-tmp-" in n for n in left), left


def test_cli_compare_video_and_upscale(tmp_path):
    save_generator(tiny_generator(1), tmp_path / "g.safetensors", {})
    pts = synth(tmp_path / "in.mp4", n=10, w=66, h=50, audio=True)
    r = run_cli("video", tmp_path / "in.mp4", tmp_path / "out.mp4", "--model", tmp_path / "g.safetensors",
                "--compare", tmp_path / "cmp.mp4", "--scale", "0.5", "--upscale", "--preset", "ultrafast")
    assert r.returncode == 0, r.stderr
    o, c = probe(tmp_path / "out.mp4"), probe(tmp_path / "cmp.mp4")
    assert (o["w"], o["h"], o["n"]) == (66, 50, 10) and o["pts"] == pts and len(o["audio"]) == 1
    assert (c["w"], c["h"], c["n"]) == (96, 24, 10) and c["pts"] == pts  # panels at the working size


def test_working_size_even_sides_timing_and_audio_kept(tmp_path):
    pts = synth(tmp_path / "in.mp4", n=12, w=66, h=50, audio=True)
    # --max-size 33: run's working size is 33x25; a video keeps even sides: 32x24
    res = translate_video(tmp_path / "in.mp4", tmp_path / "small.mp4", Identity(), max_size=33)
    o = probe(tmp_path / "small.mp4")
    assert res.size == (32, 24) and (o["w"], o["h"], o["n"]) == (32, 24, 12)
    assert o["pts"] == pts and len(o["audio"]) == 1 and abs(o["audio"][0][1] - 12 * 1001 / 30000) < 0.05
    small = cv_resize(pattern(0, 50, 66), (32, 24))
    err = np.abs(o["first"].astype(int) - small).mean()
    assert err < 10 and err < np.abs(o["first"].astype(int) - pattern(0, 50, 66)[:24, :32]).mean() / 2  # shrunk, not cropped
    # frames out: run's exact working size
    res = translate_video(tmp_path / "in.mp4", tmp_path / "frames", Identity(), max_size=33)
    assert res.size == (33, 25) and load_frames(tmp_path / "frames")[0].shape == (25, 33, 3)
    # --scale 0.5 --upscale: translated at 32x24 (even), written at the input's 66x50
    res = translate_video(tmp_path / "in.mp4", tmp_path / "up.mp4", Identity(), scale=0.5, upscale=True)
    o = probe(tmp_path / "up.mp4")
    assert res.size == (32, 24) and (o["w"], o["h"], o["n"]) == (66, 50, 12) and o["pts"] == pts
    back = cv_resize(small, (66, 50), up=True)
    assert np.abs(o["first"].astype(int) - back).mean() < 10
    assert np.abs(o["first"].astype(int) - pattern(0, 50, 66)).mean() > np.abs(o["first"].astype(int) - back).mean()


def cv_resize(img, size, up=False):
    import cv2

    return cv2.resize(img, size, interpolation=cv2.INTER_LANCZOS4 if up else cv2.INTER_AREA)


def test_cli_upscale_needs_a_working_size(tmp_path):
    synth(tmp_path / "in.mp4", n=2, audio=False)
    r = run_cli("video", tmp_path / "in.mp4", tmp_path / "out.mp4", "--upscale", "-q")
    assert r.returncode == 1 and "--upscale" in r.stderr and not (tmp_path / "out.mp4").exists()


def test_expected_total_shown_from_the_first_call(tmp_path):
    synth(tmp_path / "in.mp4", n=12, audio=False)
    calls = []
    translate_video(tmp_path / "in.mp4", tmp_path / "out.mp4", Identity(), progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 12) and calls[-1] == (12, 12)  # the length from the container, before any batch


def test_flow_computed_ahead_in_a_pool_gives_the_same_frames():
    """The flow of later pairs runs in worker threads while the blend stays in order: same output."""
    from cyclebatch.video.finish import Finisher
    from cyclebatch.video.sources import Frame

    frames, per_frame, _ = clip(n=12)
    inline, pooled = Finisher("flow", flow_workers=0), Finisher("flow", flow_workers=3)
    batches = [list(range(0, 5)), list(range(5, 12))]
    outs = {}
    for name, fin in (("inline", inline), ("pooled", pooled)):
        outs[name] = [o.rgb for b in batches
                      for o in fin([Frame(per_frame[i], i, source=frames[i]) for i in b])[0]]
        fin.close()
    stab = FlowStabilizer()
    assert all(np.array_equal(a, stab(f, p)) for a, f, p in zip(outs["inline"], frames, per_frame))
    assert all(np.array_equal(a, b) for a, b in zip(outs["inline"], outs["pooled"]))


def tone_jump_clip(n=24, jump=40):
    """Issue 29's case: the object crossing the flickering background (its edges and the pixels it uncovers
    have untrusted flow), and from mid-shot the per-frame translation's tone jumps over the whole frame
    while the input's stays (InstanceNorm reacting to new content)."""
    frames, per_frame, masks = clip(n=n)
    per_frame = [np.clip(p.astype(np.int16) + (jump if t >= n // 2 else 0), 0, 255).astype(np.uint8)
                 for t, p in enumerate(per_frame)]
    return frames, per_frame, masks


def test_a_tone_jump_mid_shot_paints_no_patchwork_no_trail_and_no_flicker(tmp_path):
    """The old stabiliser kept the old tone where the flow was trusted and took the new one around the
    moving object: a patchwork of two tones with hard edges (5% of the pixels of the worst frame here)."""
    from cyclebatch.video.measure import seam_shares

    n = 24
    frames, per_frame, masks = tone_jump_clip(n)
    src = save_frames(tmp_path / "in", frames)
    translate_video(src, tmp_path / "out", Lookup(frames, per_frame), fps=10)
    out = load_frames(tmp_path / "out")
    assert len(out) == n
    # Seams: no edge that neither the translation nor the input has, in any frame.
    seams = seam_shares(out, per_frame, frames)
    assert seams.max() <= 0.001, (seams.max(), seams.argmax())
    away = np.zeros((H, W), bool)
    away[4:TOP - 8, 4:-4] = away[TOP + SIDE + 8:-4, 4:-4] = True
    # Flicker: still removed on either side of the jump.
    for a, b in ((0, n // 2), (n // 2, n)):
        assert frame_flicker(out[a:b], frames[a:b], away) < frame_flicker(per_frame[a:b], frames[a:b], away) / 4
    # The new tone is followed: at once in part, the rest within a few frames (no lasting drift).
    tone = [abs((o.astype(np.float32) - p)[away].mean()) for o, p in zip(out, per_frame)]
    assert tone[n // 2] < 30 and np.mean(tone[-6:]) < 6, np.round(tone, 1)
    # Trails: where the object was a frame ago, the background's translation, less the background's tone.
    for t in range(3, n):
        change = out[t].astype(np.float32) - per_frame[t]
        behind = masks[t - 1] & ~masks[t]
        off = np.abs(change - np.median(change[away], axis=0)).max(axis=2)[behind].mean()
        assert off < 10, (t, off)  # a trail would be off by the object's tint (+50 red)
