"""Failures that belong to the run, not to one file, and inputs that are not files at all."""

import errno
import os
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTOS, run_cli, tiny_generator
from cyclebatch.run import pipeline
from cyclebatch.engine.translator import Translator
from cyclebatch.run.pipeline import translate_paths


def small_photos(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    im = Image.open(PHOTOS / "coffee.png").convert("RGB").resize((24, 16))
    for i in range(n):
        im.save(folder / f"{i:03d}.png")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_a_full_or_readonly_output_stops_the_run_once_and_keeps_what_was_done(tmp_path, monkeypatch, code):
    small_photos(tmp_path / "in", 60)
    real, decoded, written, granted, lock = pipeline.write_image, [], [], [], threading.Lock()

    def write_image(path, pic, quality=95):
        with lock:  # writers run in parallel: exactly three writes get space
            ok = len(granted) < 3
            granted.append(ok)
        if not ok:
            with open(path.with_name(".cyclebatch-tmp-0-x-" + path.name), "wb"):
                pass  # the real writer's temporary file would exist at this point
            os.unlink(path.with_name(".cyclebatch-tmp-0-x-" + path.name))
            raise OSError(code, os.strerror(code))
        real(path, pic, quality)
        written.append(path)

    real_decode = pipeline.decode
    monkeypatch.setattr(pipeline, "write_image", write_image)
    monkeypatch.setattr(pipeline, "decode", lambda job, opts: (decoded.append(job), real_decode(job, opts))[1])
    tr = Translator(tiny_generator(), device="cpu", precision="fp32")
    s = translate_paths([str(tmp_path / "in")], tmp_path / "out", tr)
    assert s.stopped and os.strerror(code) in s.stopped and "MiB free" in s.stopped
    assert s.failed == 0 and s.failures == []  # not 57 error lines
    assert s.translated == 3 and s.not_done == 57
    assert len(decoded) < 40  # it stopped reading too
    outs = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert outs == sorted(p.name for p in written)  # finished outputs kept, nothing half-written


def test_cli_reports_a_full_disk_in_one_line_with_exit_code_1(tmp_path):
    small_photos(tmp_path / "in", 5)
    net = tiny_generator()
    import torch

    torch.save(net.state_dict(), tmp_path / "m.pth")
    # A preloaded hook makes every image write fail as a full disk would (no tmpfs needed).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os\n"
        "import cyclebatch.run.pipeline as p\n"
        "def full(path, pic, quality=95):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "p.write_image = full\n")
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    from conftest import ROOT

    env["PYTHONPATH"] = f"{hook}{os.pathsep}{ROOT}"
    r = run_cli("run", tmp_path / "in", "-o", tmp_path / "out", "-m", tmp_path / "m.pth", "--device", "cpu", env=env)
    assert r.returncode == 1
    assert r.stderr.count("No space left on device") == 1, r.stderr
    assert "5 images not translated" in r.stderr


def test_fifos_and_devices_are_named_for_what_they_are_and_never_opened(tmp_path):
    src = tmp_path / "in"
    small_photos(src, 2)
    os.mkfifo(src / "pipe.jpg")  # opening this for reading would block forever
    os.mkfifo(tmp_path / "named.png")
    torch_file = tmp_path / "m.pth"
    import torch

    torch.save(tiny_generator().state_dict(), torch_file)
    r = run_cli("run", src, tmp_path / "named.png", "/dev/null", "-o", tmp_path / "out", "-m", torch_file,
                "--device", "cpu", timeout=120)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if "not a regular file" in ln]
    assert len(lines) == 3, r.stderr
    assert any("pipe.jpg" in ln and "named pipe" in ln for ln in lines)
    assert any("named.png" in ln and "named pipe" in ln for ln in lines)
    assert any("/dev/null" in ln and "character device" in ln for ln in lines)
    assert "empty file" not in r.stderr
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2


class Identity:
    """Stands in for the model: the video's writing is what is tested."""

    def auto_batch_size(self, h, w):
        return 4

    def translate_batch(self, frames, listener=None):
        return [f.copy() for f in frames]


@pytest.mark.parametrize("target", ["out.mp4", "frames"])
def test_video_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, target):
    from conftest import ROOT
    from cyclebatch import CycleBatchError
    from cyclebatch.video import api as video

    def full(self, frames):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(video.VideoSink if target.endswith(".mp4") else video.FolderSink, "write", full)
    dst = tmp_path / "o" / target
    with pytest.raises(CycleBatchError, match="No space left on device.*was not written") as e:
        video.translate_video(ROOT / "examples" / "clip.mp4", dst, Identity(), duration=0.3, stabilize=False)
    assert "\n" not in str(e.value) and "MiB free" in str(e.value)
    leftovers = list(dst.parent.iterdir()) if dst.parent.exists() else []
    assert leftovers == []  # no output, no temporary file or folder
