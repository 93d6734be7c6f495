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
from cyclebatch.fileio import TMP_MARK
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
