"""The pieces of a distillation: student sizes (presets and shapes) within their promise, the start from the
teacher's weights, the MAC count, and how many crops the teacher labels."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTOS, tiny_generator
from cyclebatch.errors import CycleBatchError
from cyclebatch.models.cost import macs, parameters
from cyclebatch.models.networks import GeneratorConfig, ResnetGenerator
from cyclebatch.train.distill_config import DistillConfig
from cyclebatch.train.students import SIZES, student_config, student_from


def test_presets_stay_within_their_fraction_of_the_teacher():
    teacher = ResnetGenerator(GeneratorConfig(ngf=64, n_blocks=9, affine_norm=True))  # the vintage/zoo layout
    t_macs, t_params = macs(teacher, 256, 256), parameters(teacher)
    seen = set()
    for size, preset in SIZES.items():
        cfg = student_config(teacher, size)
        student = ResnetGenerator(cfg)
        assert macs(student, 256, 256) * preset.limit <= t_macs, size
        assert parameters(student) * preset.limit <= t_params, size
        assert cfg.family == "resnet" and cfg.ngf < 64
        seen.add((cfg.ngf, cfg.n_blocks))
    assert len(seen) == 2  # tiny is not small
    # the shapes measured for the vintage/zoo layout (docs/performance.md): small wide and shallow, tiny narrow
    assert (student_config(teacher, "small").ngf, student_config(teacher, "small").n_blocks) == (32, 1)
    assert (student_config(teacher, "tiny").ngf, student_config(teacher, "tiny").n_blocks) == (16, 4)
    with pytest.raises(CycleBatchError, match="size"):
        student_config(teacher, "huge")


def test_a_size_given_as_a_shape_gives_exactly_that_student():
    teacher = tiny_generator(ngf=16, n_blocks=3, affine_norm=True)
    cfg = student_config(teacher, "6x2")
    assert (cfg.family, cfg.ngf, cfg.n_blocks, cfg.affine_norm) == ("resnet", 6, 2, True)
    DistillConfig(teacher="t", photos="p", name="n", size="6x2").validate()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    wide = student_from(teacher, student_config(teacher, "24x4"), x)  # wider and deeper than its teacher
    assert (wide.config.ngf, wide.config.n_blocks) == (24, 4) and wide(x).shape == x.shape  # fresh, not sliced
    for bad in ("6x", "x2", "0x2", "6x0", "6*2", "big"):
        with pytest.raises(CycleBatchError, match="size"):
            DistillConfig(teacher="t", photos="p", name="n", size=bad).validate()


def test_macs_counts_a_known_network():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ConvTranspose2d(8, 4, 3, stride=2,
                                                                                            padding=1, output_padding=1))
    assert macs(net, 10, 12) == 10 * 12 * 8 * 27 + 10 * 12 * 8 * 4 * 9


def test_the_teachers_weights_give_a_better_start_than_a_fresh_student():
    teacher = tiny_generator(ngf=32, n_blocks=4, affine_norm=True)
    cfg = student_config(teacher, "small")
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64)))
                                   for p in sorted(PHOTOS.glob("*.*g"))])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        target = teacher(x)
        fresh = ResnetGenerator(cfg).eval()(x)
        started = student_from(teacher, cfg, x[:4]).eval()(x)
    err = lambda y: float(((y - target) ** 2).mean())  # noqa: E731
    assert err(started) < 0.5 * err(fresh)


def test_long_runs_label_more_crops_so_that_each_is_drawn_a_few_times():
    from cyclebatch.train.crops import CROPS_RANGE, FASTEST_STEP, MAX_DRAWS, TEACHER_SHARE, crop_count

    def cfg(**kw):
        return DistillConfig(teacher="t", photos="p", name="n", **kw)

    assert crop_count(cfg(iterations=100), 10) == 480  # a short run: 48 a photo
    n12, n60 = crop_count(cfg(minutes=12), 10), crop_count(cfg(minutes=60), 10)
    assert 480 < n12 < n60 <= CROPS_RANGE[1]
    for minutes, n in ((12, n12), (60, n60)):  # what the fastest step would draw, spread over the bank
        draws = 60 * minutes * (1 - TEACHER_SHARE) / FASTEST_STEP * 16 / n
        assert draws <= MAX_DRAWS * 1.01 or n == CROPS_RANGE[1]
    assert crop_count(cfg(iterations=10**7), 10) == CROPS_RANGE[1]  # never past the memory cap
    assert crop_count(cfg(minutes=60, crops=24), 10) == 24  # --crops wins


def test_the_teachers_time_share_follows_its_pace_after_a_slow_first_batch(monkeypatch):
    """The first batch pays for the engine's warm-up: a 60-minute run's bank was cut from 8192 to 5383 crops by
    it and labelled those in a third of the time it had. A fake clock: the first batch takes 20 s, each later one
    1 s, and the teacher has 60 s."""
    from types import SimpleNamespace

    import cyclebatch.train.crops as crops

    clock = [0.0]
    monkeypatch.setattr(crops, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class Teacher:
        def __init__(self, first: float, then: float):
            self.times = [first, then]

        def translate_batch(self, batch):
            clock[0] += self.times[0]
            self.times = self.times[1:] or self.times
            return list(batch)

    files = sorted(PHOTOS.glob("*.*g"))[:3]
    for first, then, expected in ((20.0, 1.0, 40 * crops.BATCH), (1.0, 1.0, 400), (5.0, 5.0, 12 * crops.BATCH)):
        clock[0] = 0.0
        bank = crops.build(files, 400, 16, 0, Teacher(first, then), seconds=60)
        # as many as the time allows at the pace after the first batch (one batch either way), and on time
        assert abs(len(bank) - expected) <= crops.BATCH, (first, then, len(bank))
        assert clock[0] <= 60 + then
    clock[0] = 0.0
    assert len(crops.build(files, 400, 16, 0, Teacher(100.0, 1.0), seconds=60)) == crops.BATCH  # one batch, kept
