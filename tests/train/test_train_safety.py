"""Training that ends badly: killed at any moment (inside a checkpoint write too), or out of disk.
The newest checkpoint always loads, --resume continues, and no temporary file outlives its writer."""

import csv
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from cyclebatch import CycleBatchError
from cyclebatch.io.files import TMP_MARK
from cyclebatch.train import TrainConfig, load_checkpoint, train
from test_train import TINY, TINY_CLI, make_domains

# Preloaded into the training process: the Nth torch.save writes part of its file, then the process dies
# as a SIGKILL would take it (no Python cleanup, no atomic rename).
KILL_IN_SAVE = """
import os, signal, torch
_real, _n = torch.save, [0]
def save(obj, f, *a, **k):
    _n[0] += 1
    if _n[0] == int(os.environ["KILL_AT_SAVE"]):
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(obj, f, *a, **k)
torch.save = save
"""


def temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob(f"{TMP_MARK}*")]


def start(args, env=None):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "cyclebatch", "train", *map(str, args)], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_anywhere_even_inside_a_checkpoint_write_resumes_cleanly(tmp_path):
    a, b = make_domains(tmp_path)
    run = Path("runs/k")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_IN_SAVE)
    first = start([a, b, "--name", "k", "--epochs", "100", "--workers", "0", *TINY_CLI],
                  {"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "KILL_AT_SAVE": "2"})
    first.communicate(timeout=180)
    assert first.returncode == -signal.SIGKILL
    assert temporaries(run), "the kill should have left a half-written checkpoint behind"
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["iteration"] == 3  # the one before it

    rng = random.Random(7)
    for _ in range(1):  # killed again at a random moment of a resumed run
        p = start(["--name", "k", "--resume", "--workers", "0", "-q"])
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None and load_checkpoint(
                run / "checkpoints" / "latest.pt")["iteration"] < 6:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.5))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        load_checkpoint(run / "checkpoints" / "latest.pt")  # still loads, whatever the moment was

    done = load_checkpoint(run / "checkpoints" / "latest.pt")["iteration"]
    r = run_cli("train", "--name", "k", "--resume", "--max-iters", done + 3, "-q", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["iteration"] == done + 3
    assert temporaries(run) == []
    with open(run / "losses.csv") as f:
        its = [int(row["iteration"]) for row in csv.DictReader(f)]
    assert its == sorted(set(its)) and its[-1] == done + 3  # no row twice, none past the checkpoint


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_disk_stops_training_once_and_the_last_checkpoint_stays_loadable(tmp_path, monkeypatch, code):
    import torch

    a, b = make_domains(tmp_path)
    real, calls = torch.save, []

    def save(obj, f, *args, **kw):
        calls.append(1)
        if len(calls) >= 2:  # the first checkpoint fits, the second finds the disk full
            f.write(b"partial")
            raise OSError(code, os.strerror(code))
        return real(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", save)
    cfg = TrainConfig(str(a), str(b), "full", **{**TINY, "epochs": 5, "decay_epochs": 0})
    with pytest.raises(CycleBatchError) as e:
        train(cfg, log=lambda *_: None)
    msg = str(e.value)
    assert os.strerror(code) in msg and "--resume" in msg and "latest.pt" in msg and "\n" not in msg
    run = Path("runs/full")
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["iteration"] == 3
    assert temporaries(run) == []


# ---------------------------------------------------------------- a disk that fills, for real and at each write

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a tiny run's checkpoint is 2.3 MiB, so the first latest.pt fits and the second does
    not (its temporary beside the first). Needs mount rights (root here); skipped where there are none."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip() or r.returncode})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def free_mib(path: Path) -> float:
    import shutil

    return shutil.disk_usage(path).free / 2**20


def test_a_real_full_disk_during_a_checkpoint_write_stops_in_one_line_naming_the_checkpoint(tmp_path, small_disk):
    import json
    import re

    a, b = make_domains(tmp_path)
    r = run_cli("train", a, b, "--name", "r", "--runs-dir", small_disk, "--epochs", "3", "--decay-epochs", "0",
                "--workers", "0", *TINY_CLI)
    run = small_disk / "r"
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "RuntimeError" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    latest = run / "checkpoints" / "latest.pt"
    assert f"cannot write {latest}: the disk is full" in line
    assert f"{latest} (epoch 1, iteration 3) is intact" in line
    assert f"cyclebatch train --name r --resume --runs-dir {small_disk}" in line
    # the space free when the write failed (none to speak of), not after the temporary was removed (~2 MiB)
    free = float(re.search(r"([\d.]+) MiB free there when it failed", line).group(1))
    assert free + 0.5 < free_mib(small_disk)
    assert temporaries(run) == []
    assert load_checkpoint(latest)["iteration"] == 3
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "the disk is full" in status["message"]
    assert not re.search(r"Error|Errno|enforce fail|\[", status["message"]), status["message"]

    # room made: --resume continues from that checkpoint and finishes
    subprocess.run(["mount", "-o", "remount,size=16M", str(small_disk)], check=True)
    r = run_cli("train", "--name", "r", "--runs-dir", small_disk, "--resume", "--workers", "0", "-q")
    assert r.returncode == 0, r.stderr
    assert "finished after 3 epochs, 9 iterations" in r.stderr
    assert load_checkpoint(latest)["iteration"] == 9 and temporaries(run) == []

    # the same folder read-only: one line, the checkpoint named, nothing changed
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    r = run_cli("train", "--name", "r", "--runs-dir", small_disk, "--resume", "--workers", "0", "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "the file system is read-only" in r.stderr and f"{latest} (epoch 3, iteration 9) is intact" in r.stderr
    assert load_checkpoint(latest)["iteration"] == 9


def _fail_writes_to(monkeypatch, name: str, code: int = errno.ENOSPC):
    """Every write of a file called `name` (or its temporary) fails as a full disk would, after a few bytes
    reached the disk; at the lowest level each kind of file is written with."""
    import safetensors.torch
    import torch
    from matplotlib.figure import Figure
    from PIL import Image

    def hit(target) -> bool:
        return isinstance(target, (str, os.PathLike)) and os.fspath(target).endswith(name)

    def failing(real, target_of):
        def wrapper(*args, **kw):
            target = target_of(*args, **kw)
            if hit(target):
                with open(target, "wb") as f:
                    f.write(b"partial")
                raise OSError(code, os.strerror(code))
            return real(*args, **kw)
        return wrapper

    for owner, attr, target_of in (
            (Image.Image, "save", lambda im, fp, *a, **k: fp),
            (Figure, "savefig", lambda fig, fname, *a, **k: fname),
            (Path, "write_text", lambda p, *a, **k: p),
            (Path, "write_bytes", lambda p, *a, **k: p),
            (safetensors.torch, "save_file", lambda t, filename, *a, **k: filename)):
        monkeypatch.setattr(owner, attr, failing(getattr(owner, attr), target_of))
    real_save = torch.save

    def save(obj, f, *a, **k):
        if hit(getattr(f, "name", f)):
            f.write(b"partial")
            raise OSError(code, os.strerror(code))
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("name, intact", [
    ("epoch_001.png", None),        # the first epoch end's sample grid: before its checkpoint
    ("losses.png", (1, 3)),         # drawn right after the checkpoint it matches
    ("report.html", (1, 3)),
    ("G_A.safetensors", (1, 3)),    # the exported generator
    ("epoch_002.pt", (2, 6)),       # a numbered checkpoint, after latest.pt was written
    ("config.json", None),          # the first write of all
])
def test_a_full_disk_at_any_write_stops_in_one_line_naming_the_file_and_the_checkpoint(
        tmp_path, monkeypatch, name, intact):
    a, b = make_domains(tmp_path)
    _fail_writes_to(monkeypatch, name)
    cfg = TrainConfig(str(a), str(b), "full", **{**TINY, "epochs": 2, "decay_epochs": 0, "log_every": 1,
                                                  "save_every": 2})
    with pytest.raises(CycleBatchError) as e:
        train(cfg, log=lambda *_: None)
    msg = str(e.value)
    run = Path("runs/full")
    assert "\n" not in msg and msg.startswith("cannot write runs/full/") and f"{name}: the disk is full" in msg, msg
    assert "MiB free there" in msg
    if intact is None:
        assert "no checkpoint" in msg and not (run / "checkpoints" / "latest.pt").exists()
    else:
        assert f"runs/full/checkpoints/latest.pt (epoch {intact[0]}, iteration {intact[1]}) is intact" in msg
        assert "cyclebatch train --name full --resume" in msg
        assert load_checkpoint(run / "checkpoints" / "latest.pt")["iteration"] == intact[1]
    assert temporaries(run) == []
    assert not any(p.name == name for p in run.rglob("*"))  # the failed file: not there, under its name


def test_a_run_folder_under_a_file_stops_in_one_line_before_any_work(tmp_path):
    a, b = make_domains(tmp_path)
    Path("runs").write_text("not a folder\n")
    r = run_cli("train", a, b, "--name", "x", "--workers", "0", *TINY_CLI)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "runs/x" in r.stderr and "runs is a file" in r.stderr
    assert Path("runs").read_text() == "not a folder\n"  # the user's file untouched


def test_a_full_disk_under_tensorboard_stops_in_one_line_without_the_writer_threads_traceback(
        tmp_path, monkeypatch, capfd):
    from tensorboard.summary.writer import record_writer

    a, b = make_domains(tmp_path)
    real, writes = record_writer.RecordWriter.write, []

    def write(self, data):  # in TensorBoard's own writer thread
        writes.append(1)
        if len(writes) > 12:  # the settings and the first rows fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    cfg = TrainConfig(str(a), str(b), "full", **{**TINY, "epochs": 3, "decay_epochs": 0, "log_every": 1})
    with pytest.raises(CycleBatchError) as e:
        train(cfg, log=lambda *_: None)
    msg = str(e.value)
    assert msg.startswith("cannot write runs/full/tensorboard: the disk is full") and "\n" not in msg, msg
    assert "Traceback" not in capfd.readouterr().err
