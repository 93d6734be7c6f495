"""What a run shows and leaves behind besides weights: losses.csv (and the plot drawn from it), sample
grids, the progress bar. plot.py draws, board.py writes TensorBoard, status.py and page.py say where a run is."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .failure import writing
from .board import Board, have_tensorboard
from .plot import have_matplotlib, plot_losses

LOSS_NAMES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")
COLUMNS = ("iteration", "epoch", *LOSS_NAMES, "lr")


class LossLog:
    """Losses averaged over `every` iterations, one row each, kept consistent with the checkpoints:
    the file (and the plot drawn from it) is rewritten atomically when a checkpoint is, and a resume
    drops rows past it. Each row also goes to TensorBoard when a Board is given."""

    def __init__(self, run_dir: Path, every: int, enabled: bool = True, board: Optional[Board] = None,
                 title: str = ""):
        self.csv_path, self.png_path = run_dir / "losses.csv", run_dir / "losses.png"
        self.every, self.enabled, self.board, self.title = every, enabled, board, title
        self.rows: list[dict] = []
        self._sum = np.zeros(len(LOSS_NAMES))
        self._n = 0
        self._drawn: Optional[tuple] = None

    def load(self, up_to_iteration: int) -> None:
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= up_to_iteration]

    def add(self, iteration: int, epoch: int, losses: list[float], lr: float) -> None:
        self._sum += losses
        self._n += 1
        if iteration % self.every == 0:
            self.flush(iteration, epoch, lr)

    def flush(self, iteration: int, epoch: int, lr: float) -> None:
        if not self._n:
            return
        mean = self._sum / self._n
        self._sum[:], self._n = 0, 0
        row = {"iteration": iteration, "epoch": epoch, **{k: f"{v:.6g}" for k, v in zip(LOSS_NAMES, mean)},
               "lr": f"{lr:.6g}"}
        self.rows.append(row)
        if self.board:
            self.board.scalars(iteration, dict(zip(LOSS_NAMES, mean)), lr)

    def last(self) -> dict:
        return {k: float(v) for k, v in self.rows[-1].items() if k in LOSS_NAMES} if self.rows else {}

    def write(self) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with writing(self.csv_path) as tmp:
            tmp.write_text(buf.getvalue())
        drawn = (len(self.rows), self.rows[-1]["iteration"] if self.rows else None)
        if drawn != self._drawn or not self.png_path.exists():  # ~0.4 s of CPU: not twice for the same rows
            plot_losses(self.rows, self.png_path, self.title)
            self._drawn = drawn
        if self.board:
            self.board.flush()


def missing_extras() -> Optional[str]:
    """One line naming what the `train` extra would add, or None when it is installed."""
    missing = [(pkg, what) for pkg, what, ok in (("matplotlib", "no loss plot", have_matplotlib()),
                                                 ("tensorboard", "no TensorBoard events", have_tensorboard()))
               if not ok]
    if not missing:
        return None
    return (f"{' and '.join(p for p, _ in missing)} not installed: {', '.join(w for _, w in missing)} "
            "(pip install 'cyclebatch[train]')")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] CHW -> HxWx3 uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def save_grid(path: Path, rows: list[list[torch.Tensor]]) -> np.ndarray:
    """One PNG: each row is [real, translated, reconstructed] for one sample image. Returns the grid."""
    grid = np.concatenate([np.concatenate([to_uint8(t) for t in row], axis=1) for row in rows], axis=0)
    png = io.BytesIO()  # encoded first: PIL deletes what it wrote on failure, before the free space is noted
    Image.fromarray(grid).save(png, "PNG")
    with writing(path) as tmp:
        tmp.write_bytes(png.getvalue())
    return grid


class Progress:
    """A rich progress bar with losses and iterations/s on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool, epochs: int, per_epoch: int):
        self.bar = None
        self.per_epoch, self.epochs = per_epoch, epochs
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(stderr=True)
            if console.is_terminal:
                self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                    TextColumn("{task.fields[losses]}"), console=console, transient=False)
        self.task = None
        self._t = time.perf_counter()
        self._n = 0

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start_epoch(self, epoch: int, done: int) -> None:
        if self.bar is None:
            return
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task("", total=self.per_epoch, completed=done, epoch=f"{epoch + 1}/{self.epochs}",
                                      rate="", losses="")
        self._t, self._n = time.perf_counter(), 0

    def advance(self, losses: list[float]) -> None:
        if self.bar is None:
            return
        self._n += 1
        rate = self._n / max(time.perf_counter() - self._t, 1e-9)
        shown = "  ".join(f"{k} {v:.3f}" for k, v in zip(LOSS_NAMES, losses) if not k.startswith("idt"))
        self.bar.update(self.task, advance=1, rate=f"{rate:.2f} it/s", losses=shown)
