"""runs/NAME/status.json: where a run is, for `cyclebatch runs status` while it trains.

The trainer rewrites the small file atomically every couple of seconds (and at each epoch end and at the
end), so a reader never sees half of it and never has to parse the growing losses.csv. A reader on the
same machine also checks that the writing process is still alive: a run killed with SIGKILL says so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CycleBatchError
from .failure import writing

STATUS_FILE = "status.json"
EVERY_SECONDS = 2.0
WINDOW = 50  # iterations behind the seconds-per-iteration figure: recent speed, not the average since start


class StatusWriter:
    def __init__(self, run_dir: Path, loss_names, epochs: int, per_epoch: int, max_iterations: Optional[int],
                 enabled: bool = True):
        self.path = run_dir / STATUS_FILE
        self.names, self.epochs, self.per_epoch = tuple(loss_names), epochs, per_epoch
        total = epochs * per_epoch
        self.total = min(total, max_iterations) if max_iterations is not None else total
        self.enabled = enabled
        self.started = time.time()
        self._times: deque = deque(maxlen=WINDOW + 1)
        self._sum, self._n = np.zeros(len(self.names)), 0
        self._losses: dict = {}
        self._spi: Optional[float] = None
        self._last_write = 0.0
        self.extra: dict = {}  # more fields for the file (a distillation's best held-out score)

    def iteration(self, epoch: int, step: int, iteration: int, losses, lr: float) -> None:
        """After each iteration: epoch (0-based, the one running), step within it, iterations in all."""
        self._times.append(time.perf_counter())
        self._sum += np.asarray(losses, dtype=float)
        self._n += 1
        if time.perf_counter() - self._last_write >= EVERY_SECONDS or iteration == 1:
            self.write("training", epoch, step, iteration, lr)

    def pause(self) -> None:
        """An epoch end (samples, checkpoint) is not iteration time: the speed window starts again."""
        self._times.clear()

    def write(self, state: str, epoch: int, step: int, iteration: int, lr: float, message: str = "") -> None:
        if not self.enabled:
            return
        if self._n:
            self._losses = {k: round(float(v), 6) for k, v in zip(self.names, self._sum / self._n)}
            self._sum[:], self._n = 0, 0
        if len(self._times) >= 2:  # else the last figure stands (just after an epoch end, say)
            self._spi = (self._times[-1] - self._times[0]) / (len(self._times) - 1)
        spi = self._spi
        remaining = max(0, self.total - iteration)
        doc = {
            "state": state, "message": message, "pid": os.getpid(), "host": socket.gethostname(),
            # the epoch in progress, 1-based; between epochs (step 0) of a run at rest, the last one completed
            "epoch": min(epoch + (1 if state == "training" or step > 0 else 0), self.epochs),
            "epochs": self.epochs, "step": step, "per_epoch": self.per_epoch,
            "iteration": iteration, "iterations": self.total,
            "losses": self._losses, "lr": lr,
            "seconds_per_iteration": None if spi is None else round(spi, 4),
            "eta_seconds": 0 if remaining == 0 else (None if spi is None else round(spi * remaining, 1)),
            "started": self.started, "updated": time.time(), **self.extra,
        }
        with writing(self.path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
        self._last_write = time.perf_counter()


def find_run(where: str, runs_dir: Path = Path("runs")) -> Path:
    """A run folder from a path (runs/NAME) or a bare name under runs_dir."""
    for candidate in (Path(where), runs_dir / where):
        if (candidate / STATUS_FILE).is_file() or (candidate / "config.json").is_file():
            return candidate
    raise CycleBatchError(f"{where}: not a training run (no {STATUS_FILE} there or in {runs_dir / where})")


def read_status(run_dir: Path) -> dict:
    """status.json, with "alive" (None when the writer ran on another machine) and "running" added."""
    path = run_dir / STATUS_FILE
    if not path.is_file():
        raise CycleBatchError(f"{path}: no status yet (the run has not started its first iteration, or it was "
                              "trained by an older cyclebatch)")
    try:
        doc = json.loads(path.read_text())
        doc["state"], doc["iteration"]
    except (ValueError, KeyError, TypeError) as e:
        raise CycleBatchError(f"{path}: unreadable status file ({e})") from None
    alive = _alive(doc.get("pid")) if doc.get("host") == socket.gethostname() else None
    doc["alive"] = alive
    doc["running"] = doc["state"] == "training" and alive is not False
    return doc


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that id: alive as far as we can tell
        return True
    return True


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def describe(doc: dict, now: Optional[float] = None) -> list[str]:
    """The status as a few lines of text."""
    now = time.time() if now is None else now
    ago = duration(now - doc["updated"]) + " ago" if doc.get("updated") else "unknown"
    state = doc["state"]
    if state == "training" and doc.get("alive") is False:
        state = f"not running (process {doc.get('pid')} is gone; killed?) - continue with --resume"
    elif state == "stopped":
        state = "stopped - continue with --resume"
    elif state == "failed":
        state = f"failed: {doc.get('message', '')}"
    within = f" (iteration {doc['step']} of {doc['per_epoch']} in it)" if doc["state"] == "training" or doc["step"] else ""
    lines = [f"state        {state}"]
    if doc["epochs"] > 1:  # one epoch (a distillation's single pass over its plan) says nothing the next line does not
        lines.append(f"epoch        {doc['epoch']} / {doc['epochs']}{within}")
    lines.append(f"iteration    {doc['iteration']} / {doc['iterations']}")
    best = doc.get("held_out")
    if best:
        lines.append(f"held-out     PSNR {best['psnr']:.2f} dB, SSIM {best['ssim']:.4f} to the teacher "
                     f"(best so far, iteration {best['iteration']})")
    if doc.get("losses"):
        lines.append("losses       " + "  ".join(f"{k} {v:.3f}" for k, v in doc["losses"].items()))
    spi = doc.get("seconds_per_iteration")
    lines.append(f"speed        {'unknown' if spi is None else f'{spi:.3f} s/iteration'}")
    if doc.get("running"):
        lines.append(f"to finish    {duration(doc.get('eta_seconds'))}")
    lines.append(f"updated      {ago}")
    return lines
