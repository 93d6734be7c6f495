"""`video` on a CPU runs two batches at once (pipeline.model_teams): frames keep their order and their pixels,
each batch runs on its half of the threads, and what must stay sequential does."""

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cyclebatch.engine.passes import ShapePlan
from cyclebatch.engine.translator import Translator
from cyclebatch.video.api import translate_video
from cyclebatch.engine.teams import teams as model_teams
from conftest import Concurrency, tiny_generator


def write_frames(folder, n, h=48, w=64):
    """Frames that differ everywhere from one to the next: a swap of two shows at every pixel."""
    folder.mkdir()
    frames = []
    for i in range(n):
        y, x = np.mgrid[0:h, 0:w]
        f = np.stack([(x * 3 + i * 37) % 256, (y * 5 + i * 91) % 256, np.full_like(x, (i * 53) % 256)], -1)
        f = f.astype(np.uint8)
        Image.fromarray(f).save(folder / f"{i:04d}.png")
        frames.append(f)
    return frames


def read_frames(folder):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())]


class SlowCPU:
    """A stand-in translator on the CPU: batches take uneven times (so they finish out of order when two run
    at once); records how many run at once and the torch threads each ran with."""

    device = torch.device("cpu")

    def __init__(self, fail_at=None):
        self.calls, self.count, self.fail_at = Concurrency(), 0, fail_at

    def auto_batch_size(self, h, w):
        return 1

    def plan_for(self, h, w):  # what engine.teams.fits reads: untiled, memory for any number of passes
        return ShapePlan(batch=1, tiled=False, budget=1 << 40)

    model, dtype = tiny_generator(), None

    def translate_batch(self, frames):
        with self.calls.call():
            with self.calls.lock:
                self.count += 1
                call = self.count
            time.sleep(0.03 if call % 2 else 0.005)  # odd calls slow: the next one finishes first
            if call == self.fail_at:
                raise RuntimeError("boom")
            return [255 - f for f in frames]


def test_two_batches_at_once_frames_in_order_each_on_half_the_threads(tmp_path, two_threads):
    frames = write_frames(tmp_path / "in", 12)
    tr = SlowCPU()
    res = translate_video(tmp_path / "in", tmp_path / "out", tr, temporal="off", fps=10)
    assert res.frames == 12
    assert tr.calls.most == 2  # two batches were in the model at once
    assert tr.calls.threads == {1}  # each on one of the two threads
    out = read_frames(tmp_path / "out")
    assert len(out) == 12
    for i, (f, o) in enumerate(zip(frames, out)):
        assert np.array_equal(o, 255 - f), f"frame {i} is not its own translation"
    assert torch.get_num_threads() == 2  # the caller's setting is left alone


def test_a_failing_batch_in_a_team_stops_the_run_and_leaves_nothing(tmp_path, two_threads):
    write_frames(tmp_path / "in", 10)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="boom"):
        translate_video(tmp_path / "in", tmp_path / "out.mp4", SlowCPU(fail_at=5), temporal="off", fps=10)
    assert not (tmp_path / "out.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary left either


def test_teams_only_where_frames_are_independent_on_a_cpu(two_threads):
    cpu = SlowCPU()
    assert model_teams(cpu, sequential=False) == 2
    assert model_teams(cpu, sequential=True) == 1  # shared statistics carry from frame to frame

    class OnGPU(SlowCPU):
        device = torch.device("cuda")

    class Compiled(SlowCPU):
        compiled = True

    assert model_teams(OnGPU(), sequential=False) == 1
    assert model_teams(Compiled(), sequential=False) == 1
    assert model_teams(object(), sequential=False) == 1  # a stand-in without a device
    real = Translator(tiny_generator(), device="cpu", precision="fp32")
    assert model_teams(real, sequential=False) == 2
    real.backend = object()  # OpenVINO, say: one infer request per shape, its own threads
    assert model_teams(real, sequential=False) == 1
    torch.set_num_threads(1)
    assert model_teams(cpu, sequential=False) == 1


def test_a_real_model_in_teams_gives_each_frame_its_own_translation(tmp_path, two_threads):
    frames = write_frames(tmp_path / "in", 8)
    tr = Translator(tiny_generator(), device="cpu", precision="fp32")
    translate_video(tmp_path / "in", tmp_path / "out", tr, temporal="off", fps=10)
    out = read_frames(tmp_path / "out")
    assert len(out) == 8
    for i, (f, o) in enumerate(zip(frames, out)):
        ref = tr.translate(f)
        # within a level: two threads and one sum a convolution in different orders
        assert np.abs(o.astype(int) - ref).max() <= 1, f"frame {i}"
    # and the frames differ from each other by far more than that: an order swap would show
    assert min(np.abs(out[i].astype(int) - out[i + 1]).mean() for i in range(7)) > 5


def test_tiled_images_from_two_threads_at_once_come_out_as_one_by_one(two_threads):
    """The tiler hooks the model's own norms; two threads tiling at once must not see each other's hooks."""
    tr = Translator(tiny_generator(), device="cpu", precision="fp32", tile=32)
    rng = np.random.default_rng(0)
    images = [(rng.random((80, 96, 3)) * 255).astype(np.uint8) for _ in range(4)]
    alone = [tr.translate(im) for im in images]
    got, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(3):
                got[i] = tr.translate(images[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, g in zip(alone, got):
        assert np.array_equal(a, g)
