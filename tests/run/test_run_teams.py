"""`run` on a CPU puts two batches through at once, each on half the torch threads (engine/teams.py): every
image still gets its own translation, a failing batch costs its own files only, and tiled or large images run
one at a time on every thread."""

import numpy as np
import torch
from PIL import Image

from conftest import Concurrency, tiny_generator
from cyclebatch.engine.memory import estimate_bytes
from cyclebatch.engine.teams import fits
from cyclebatch.engine.translator import Translator
from cyclebatch.run.pipeline import translate_paths


class Watched(Translator):
    """The real engine, recording how many batches run at once and the torch threads each ran with."""

    def __init__(self, *a, fail_on=None, **kw):
        super().__init__(*a, **kw)
        self.calls = Concurrency()
        self.fail_on = fail_on

    def submit(self, images, listener=None):  # both paths: translate_batch in a team, submit in the caller
        with self.calls.call():
            if self.fail_on is not None and any(im[0, 0, 0] == self.fail_on for im in images):
                raise RuntimeError("boom")
            return super().submit(images, listener)


def images(folder, n, size=(64, 48)):
    """Images that differ everywhere from one to the next; the first pixel's red value numbers them."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    out = {}
    for i in range(n):
        im = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        im[0, 0, 0] = 10 + i
        Image.fromarray(im).save(folder / f"{i:02d}.png")
        out[f"{i:02d}.png"] = im
    return out


def test_two_batches_at_once_each_image_its_own_translation(tmp_path, two_threads):
    src = images(tmp_path / "in", 10)
    tr = Watched(tiny_generator(), device="cpu", precision="fp32")
    summary = translate_paths([str(tmp_path / "in")], tmp_path / "out", tr)
    assert summary.translated == 10 and summary.failed == 0
    assert tr.calls.most == 2 and tr.calls.threads == {1}
    for name, im in src.items():
        out = np.asarray(Image.open(tmp_path / "out" / name).convert("RGB"))
        # within a level of translate's own: one thread and two sum a convolution in different orders
        assert np.abs(out.astype(int) - tr.translate(im)).max() <= 1, name
    assert torch.get_num_threads() == 2


def test_a_failing_batch_in_a_team_costs_its_own_file_only(tmp_path, two_threads):
    images(tmp_path / "in", 8)
    tr = Watched(tiny_generator(), device="cpu", precision="fp32", fail_on=13)  # 03.png
    summary = translate_paths([str(tmp_path / "in")], tmp_path / "out", tr)
    assert summary.translated == 7 and summary.failed == 1
    assert summary.failures[0][0].endswith("03.png") and "boom" in summary.failures[0][1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i:02d}.png" for i in range(8) if i != 3]


def test_tiled_and_large_images_take_every_thread(tmp_path, two_threads):
    tiled = Watched(tiny_generator(), device="cpu", precision="fp32", tile=32)
    assert not fits(tiled, 48, 64, 2)
    images(tmp_path / "in", 4)
    translate_paths([str(tmp_path / "in")], tmp_path / "out", tiled)
    assert tiled.calls.most == 1 and tiled.calls.threads == {2}
    # an image that fits the memory budget once but not twice runs alone
    tight = Translator(tiny_generator(), device="cpu", precision="fp32")
    plan = tight.plan_for(48, 64)
    plan.budget = int(1.5 * estimate_bytes(tight.model, 48, 64, tight.dtype))  # one pass fits, two do not
    assert not fits(tight, 48, 64, 2) and fits(tight, 48, 64, 1)


def test_the_thread_governor_leaves_a_teams_share_alone(tmp_path, two_threads):
    """`cyclebatch run` builds its engine with the governor on; in a team it must not put a thread back."""
    images(tmp_path / "in", 6)
    tr = Watched(tiny_generator(), device="cpu", precision="fp32", adapt_threads=True)
    assert tr.governor is not None
    tr.governor.threads = 1  # as if it had lowered the count while another process was busy: it would now raise it
    tr.governor.others_busy = lambda: 0.0
    translate_paths([str(tmp_path / "in")], tmp_path / "out", tr)
    assert tr.calls.most == 2 and tr.calls.threads == {1}
