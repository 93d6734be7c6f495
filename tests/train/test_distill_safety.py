"""`cyclebatch distill` against bad input and bad moments: a bad or empty photo folder, an unusable held-out
photo, nonsense flags, an existing run, a full disk, Ctrl-C while the teacher labels: one line each, nothing lost."""

import errno
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTOS, run_cli
from cyclebatch.errors import CycleBatchError
from cyclebatch.train.distill import distill
from cyclebatch.train.distill_config import DistillConfig
from test_distill import config, photos, teacher_file


@pytest.mark.parametrize("case", ["missing", "empty", "all bad", "a file"])
def test_a_bad_photo_folder_is_one_line(tmp_path, case):
    teacher = teacher_file(tmp_path / "teacher.safetensors")
    folder = tmp_path / "photos"
    if case == "empty":
        folder.mkdir()
    elif case == "all bad":
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"not a jpeg")
        (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif case == "a file":
        folder = PHOTOS / "chelsea.png"
    r = run_cli("distill", teacher, folder, "--name", "s", "--iterations", "5", cwd=tmp_path)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert str(folder.name) in lines[-1]
    assert not (tmp_path / "runs" / "s" / "generator.safetensors").exists()


def test_a_bad_photo_among_good_ones_is_skipped(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.safetensors")
    cfg = config(tmp_path, teacher, iterations=4, evals=1)
    (Path(cfg.photos) / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    warnings = []
    result = distill(cfg, log=lambda m: None, warn=warnings.append)
    assert result.finished and any("broken.jpg" in w for w in warnings)


def test_an_existing_run_is_never_overwritten(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.safetensors")
    first = distill(config(tmp_path, teacher, iterations=3, evals=1))
    before = first.generator.read_bytes()
    with pytest.raises(CycleBatchError, match="--resume"):
        distill(config(tmp_path, teacher, iterations=3, evals=1))
    assert first.generator.read_bytes() == before
    r = run_cli("distill", teacher, tmp_path / "photos", "--name", "x", "--minutes", "1", "--iterations", "3",
                cwd=tmp_path)
    assert r.returncode == 2 and "not both" in r.stderr


def test_ctrl_c_while_the_teacher_labels_stops_at_once_and_resume_starts_the_run_again(tmp_path, monkeypatch):
    """The teacher can take minutes (a third of a budget): Ctrl-C then stops after the batch in hand, not after
    the last crop, and --resume, with no checkpoint written yet, starts the run again from its settings."""
    from cyclebatch.engine.translator import Translator

    teacher = teacher_file(tmp_path / "teacher.safetensors")
    real, batches = Translator.translate_batch, []

    def labelling(self, images, *a, **kw):
        if len(images) > 1:  # the crops' batches (held-out photos go one at a time)
            batches.append(len(images))
            if len(batches) == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return real(self, images, *a, **kw)

    monkeypatch.setattr(Translator, "translate_batch", labelling)
    lines = []
    stopped = distill(config(tmp_path, teacher, name="c", iterations=8, evals=2, crops=400), log=lines.append)
    assert stopped.interrupted and stopped.iteration == 0 and stopped.generator is None
    assert len(batches) == 2  # of 50
    assert any("--resume" in m for m in lines), lines
    with pytest.raises(CycleBatchError, match="already holds"):  # not overwritten without --resume
        distill(config(tmp_path, teacher, name="c", iterations=8, evals=2, crops=400))
    monkeypatch.setattr(Translator, "translate_batch", real)
    resumed = distill(DistillConfig(teacher="", photos="", name="c", runs_dir=str(tmp_path / "runs"), resume=True,
                                    progress=False))
    assert resumed.finished and resumed.iteration == 8 and resumed.generator is not None
    assert len(np.load(stopped.run_dir / "cache" / "crops.npz")["inputs"]) == 400  # its own settings, whole


def test_a_full_disk_after_a_checkpoint_names_it_in_one_line(tmp_path, monkeypatch):
    teacher = teacher_file(tmp_path / "teacher.safetensors")
    real, calls = torch.save, []

    def save(obj, f, *args, **kw):
        calls.append(1)
        if len(calls) >= 2:  # the first checkpoint fits, the second finds the disk full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CycleBatchError) as e:
        distill(config(tmp_path, teacher, name="full", iterations=12, evals=3))
    msg = str(e.value)
    assert "latest.pt (iteration 4) is intact" in msg and "distill --name full --resume" in msg, msg
    assert "\n" not in msg and os.strerror(errno.ENOSPC) in msg


def test_a_held_out_photo_too_small_for_the_model_is_skipped_by_name(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.safetensors")
    cfg = config(tmp_path, teacher, iterations=4, evals=1)
    Image.new("RGB", (3, 3), (200, 10, 10)).save(Path(cfg.photos) / "tiny.png")
    held = tmp_path / "held"
    photos(held)
    Image.new("RGB", (3, 3), (200, 10, 10)).save(held / "a-tiny.png")
    warnings = []
    result = distill(DistillConfig(**{**cfg.to_dict(), "val": str(held)}), warn=warnings.append)
    assert result.finished and result.generator is not None  # the tiny training photo is only upscaled in crops
    assert [w for w in warnings if "a-tiny.png" in w and "too small" in w], warnings
    only_tiny = tmp_path / "only-tiny"
    only_tiny.mkdir()
    Image.new("RGB", (3, 3), (200, 10, 10)).save(only_tiny / "t.png")
    with pytest.raises(CycleBatchError, match="none of the held-out photos can be used"):
        distill(DistillConfig(**{**cfg.to_dict(), "name": "t", "val": str(only_tiny)}), warn=warnings.append)


@pytest.mark.parametrize("flags", [("--minutes", "inf"), ("--minutes", "0"), ("--lr", "nan"), ("--lr", "inf"),
                                   ("--size", "0x0"), ("--crop-size", "30"), ("--batch-size", "0"),
                                   ("--minutes", "5", "--iterations", "9")])
def test_nonsense_settings_are_usage_errors_before_any_work(tmp_path, flags):
    # --minutes inf once ended in "unexpected OverflowError"; every settings error was exit 1, not the usage code
    r = run_cli("distill", tmp_path / "no-teacher.pth", tmp_path / "no-photos", "--name", "s", *flags,
                "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and r.stderr.startswith("error: distill: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "runs").exists()
