"""temporal.py: the flow stabiliser on a synthetic clip, and the warping-error measure it is judged by."""

import threading
import tracemalloc

import cv2
import numpy as np
import pytest

from cyclebatch.video.temporal import FlowStabilizer, PairGeometry, grid, pair_geometry, visible, warp_error

H, W, SIDE, SPEED = 96, 128, 40, 3  # frame, object side, object speed in px a frame
TOP = 28


def texture(rng, h, w, sigma=1.5):
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), sigma)


def clip(n=24, seed=0, flicker=True):
    """A textured object crossing a static textured background, and a stand-in for per-frame translation
    P: a tone curve, a strong tint on the object (so that a trail of it would show), and, when
    `flicker`, a new global tone offset and a new grain every frame (what a CycleGAN invents per frame)."""
    rng = np.random.default_rng(seed)
    bg = texture(rng, H, W)
    obj = texture(rng, SIDE, SIDE) // 2 + 60
    frames, per_frame, masks = [], [], []
    for t in range(n):
        x = 4 + SPEED * t
        f = bg.copy()
        f[TOP:TOP + SIDE, x:x + SIDE] = obj
        m = np.zeros((H, W), bool)
        m[TOP:TOP + SIDE, x:x + SIDE] = True
        look = 0.7 * f.astype(np.float32) + 60
        look[m] += (50, -20, -20)
        if flicker:
            look += rng.normal(0, 6, (H, W, 1)) + rng.normal(0, 4)
        frames.append(f)
        per_frame.append(np.clip(look, 0, 255).round().astype(np.uint8))
        masks.append(m)
    return frames, per_frame, masks


@pytest.fixture(scope="module")
def stabilised():
    """The flickering clip and the stabiliser's output, computed once for the tests that only look."""
    frames, per_frame, masks = clip()
    return frames, per_frame, masks, run(FlowStabilizer(), frames, per_frame)


def run(stab, frames, per_frame, cuts=None):
    cuts = cuts or [None] * len(frames)
    return [stab(f, p, c) for f, p, c in zip(frames, per_frame, cuts)]


def frame_flicker(seq, frames, region):
    """Mean squared change of the model-added part R = O - I between consecutive frames, over a region
    that is static in the input (so no warping is needed: this is E_warp of R there)."""
    r = [(o.astype(np.float32) - f) / 255 for o, f in zip(seq, frames)]
    return np.mean([((b - a) ** 2).sum(axis=2)[region].mean() for a, b in zip(r, r[1:])])


def test_static_background_stops_flickering(stabilised):
    frames, per_frame, _, out = stabilised
    away = np.zeros((H, W), bool)
    away[4:TOP - 8, 4:-4] = away[TOP + SIDE + 8:-4, 4:-4] = True  # never near the object
    before, after = frame_flicker(per_frame, frames, away), frame_flicker(out, frames, away)
    assert after < before / 10, (before, after)
    # The look is kept: the tone curve is still there, only its frame-to-frame noise is gone.
    look = lambda seq: np.mean([np.abs(o.astype(np.float32) - f)[away].mean()  # noqa: E731
                                for o, f in zip(seq, frames)])
    assert look(out) > 0.9 * look(per_frame)
    bias = np.mean([(o.astype(np.float32) - p)[away].mean() for o, p in zip(out, per_frame)])
    assert abs(bias) < 1.0  # no drift of the tone


def test_occluded_and_disoccluded_pixels_take_the_current_frame(stabilised):
    """Where the flow is not trusted the current translation's detail is kept, with the tone correction
    of the background around it (the stabiliser corrects tone as a whole): no trail of the object."""
    frames, per_frame, masks, out = stabilised
    away = np.zeros((H, W), bool)
    away[4:TOP - 8, 4:-4] = away[TOP + SIDE + 8:-4, 4:-4] = True
    uncovered, covered, past = [], [], []
    for t in range(3, len(frames)):
        change = out[t].astype(np.float32) - per_frame[t]
        diff = np.abs(change - np.median(change[away], axis=0)).max(axis=2)  # less the background's tone
        behind = masks[t - 1] & ~masks[t]  # the object left these pixels: a trail would be here
        uncovered.append(diff[behind].mean())
        covered.append(diff[masks[t] & ~masks[t - 1]].mean())  # the object's leading edge
        past.append(np.abs(per_frame[t - 1].astype(np.float32) - per_frame[t]).max(axis=2)[behind].mean())
    # Keeping the past there would be off by the object's tint (+50 red); the frame's own flicker is ~7.
    assert min(past) > 30
    assert np.mean(uncovered) < 5 and max(uncovered) < 10, uncovered
    assert np.mean(covered) < 5 and max(covered) < 10, covered


def test_moving_object_is_stabilised_too(stabilised):
    frames, per_frame, _, out = stabilised

    def inside(seq, t):  # the object's interior, away from its edges, in the object's own coordinates
        x = 4 + SPEED * t + 8
        return (seq[t].astype(np.float32) - frames[t])[TOP + 8:TOP + SIDE - 8, x:x + SIDE - 16]

    change = lambda seq: np.mean([((inside(seq, t + 1) - inside(seq, t)) ** 2).mean()  # noqa: E731
                                  for t in range(4, len(frames) - 1)])
    assert change(out) < change(per_frame) / 4


def test_a_cut_restarts_from_the_current_translation():
    frames, per_frame, _ = clip()
    other_frames, other, _ = clip(seed=1)
    stab = FlowStabilizer()
    run(stab, frames[:6], per_frame[:6])
    assert not np.array_equal(stab(frames[6], per_frame[6], False), per_frame[6])
    assert np.array_equal(stab(other_frames[0], other[0], True), other[0])  # told: a cut
    # The first scene again, not told, and the same colours: the warped input matches almost nowhere.
    stab(other_frames[1], other[1], False)
    assert np.array_equal(stab(frames[7], per_frame[7], False), per_frame[7])
    # cut=None: the colour-histogram detector decides
    inverted = [255 - f for f in frames]
    assert np.array_equal(stab(inverted[8], per_frame[8]), per_frame[8])
    assert stab.restarts == 3


def test_state_does_not_grow_with_the_video():
    frames, per_frame, _ = clip(n=28)
    stab = FlowStabilizer()
    run(stab, frames[:5], per_frame[:5])
    early = stab.state_bytes
    # one input, one translation-sized change, the pixel grids: nothing per frame
    assert early < 3 * H * W * (1 + 4) + 2 * H * W * 4 * 2 + 4096
    tracemalloc.start()
    try:
        run(stab, frames[5:10], per_frame[5:10])
        before = tracemalloc.get_traced_memory()[0]
        run(stab, frames[10:], per_frame[10:])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert stab.state_bytes == early
    assert grown < 3 * H * W  # 18 more frames, not even one frame's worth more held
    # Another size starts afresh and holds only that size.
    small = [f[::2, ::2].copy() for f in frames[:3]]
    out = run(stab, small, [p[::2, ::2].copy() for p in per_frame[:3]])
    assert np.array_equal(out[0], per_frame[0][::2, ::2]) and stab.state_bytes < early


def test_no_flicker_no_change_and_bad_input():
    frames, per_frame, _ = clip(n=10, flicker=False)
    out = run(FlowStabilizer(), frames, per_frame)
    # A translation without flicker comes through (almost) untouched: nothing is smoothed away.
    assert np.mean([np.abs(o.astype(np.int16) - p).mean() for o, p in zip(out, per_frame)]) < 1.0
    with pytest.raises(ValueError):
        FlowStabilizer()(frames[0], per_frame[0][:-1])


def test_the_callers_buffers_may_be_reused():
    """A decoder may hand out the same buffer for every frame: the state must not alias it."""
    frames, per_frame, _ = clip(n=6)
    expected = run(FlowStabilizer(), frames, per_frame)
    stab, buf, tbuf = FlowStabilizer(), np.empty_like(frames[0]), np.empty_like(per_frame[0])
    for f, p, e in zip(frames, per_frame, expected):
        buf[...], tbuf[...] = f, p
        assert np.array_equal(stab(buf, tbuf), e)


def test_threads_give_the_same_result():
    """One stabiliser per video; two running in threads (as the writer thread will) do not interfere."""
    clips = [clip(n=8, seed=s) for s in (0, 1)]
    alone = [run(FlowStabilizer(), f, p) for f, p, _ in clips]
    got = [None, None]

    def work(i):
        got[i] = run(FlowStabilizer(), clips[i][0], clips[i][1])

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, got):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------- the measure

def shifted_pair(dx, dy):
    """Two views of one texture, the second moved by (dx, dy) whole pixels, with the exact flow."""
    rng = np.random.default_rng(3)
    big = texture(rng, H + 20, W + 20)
    a = big[10:10 + H, 10:10 + W]
    b = big[10 - dy:10 - dy + H, 10 - dx:10 - dx + W]
    fw = np.zeros((H, W, 2), np.float32)
    fw[...] = (dx, dy)
    return a, b, fw


def test_warp_error_of_an_exact_shift_is_zero_and_of_flicker_its_square():
    a, b, fw = shifted_pair(3, -2)
    gx, gy = grid(H, W)
    vis = visible(fw, -fw, gx, gy)
    # everything visible but the strip that leaves the frame
    assert vis.sum() == (W - 3) * (H - 2)
    geom = PairGeometry(gx + fw[..., 0], gy + fw[..., 1], vis, ~visible(-fw, fw, gx, gy))
    x, y = a.astype(np.float32) / 255, b.astype(np.float32) / 255
    assert warp_error(x, y, geom) < 1e-12
    # A tone flicker of 0.02 on every channel: E_warp sums the channels' squares.
    assert warp_error(x, y + 0.02, geom) == pytest.approx(3 * 0.02 ** 2, rel=1e-4)
    # The estimated flow (DIS at its MEDIUM preset) finds the same shift.
    est = pair_geometry(a, b)
    assert est.visible.mean() > 0.9
    assert warp_error(x, y, est) < 1e-4
    assert warp_error(x, y + 0.02, est) == pytest.approx(3 * 0.02 ** 2, rel=0.1)


def test_visibility_marks_occlusions_and_motion_boundaries():
    """An object moving right by 4 px over a still background: the background it is about to cover is
    occluded (forward-backward check), its edges are motion boundaries, the rest is visible."""
    fw = np.zeros((H, W, 2), np.float32)
    bw = np.zeros((H, W, 2), np.float32)
    fw[30:60, 40:70] = (4, 0)  # object in frame a
    bw[30:60, 44:74] = (-4, 0)  # the same object in frame b
    vis = visible(fw, bw)
    assert not vis[35:55, 71:74].any()  # covered in b
    assert vis[35:55, 45:65].all() and vis[5:20].all() and vis[70:].all()
    assert not vis[29:31, 45:65].any() and not vis[59:61, 45:65].any()  # its top and bottom edges
