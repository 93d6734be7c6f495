"""What a run shows and leaves behind besides weights: losses.csv, losses.png, sample grids, TensorBoard,
the progress bar."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..fileio import atomic_path

LOSS_NAMES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")
COLUMNS = ("iteration", "epoch", *LOSS_NAMES, "lr")


class LossLog:
    """Losses averaged over `every` iterations, one row each, kept consistent with the checkpoints:
    the file is rewritten (atomically) when a checkpoint is, and a resume drops rows past it."""

    def __init__(self, run_dir: Path, every: int, enabled: bool = True):
        self.csv_path, self.png_path = run_dir / "losses.csv", run_dir / "losses.png"
        self.every, self.enabled = every, enabled
        self.rows: list[dict] = []
        self._sum = np.zeros(len(LOSS_NAMES))
        self._n = 0
        self.tb = _tensorboard(run_dir) if enabled else None

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
        if self.tb is not None:
            for k, v in zip(LOSS_NAMES, mean):
                self.tb.add_scalar(f"loss/{k}", v, iteration)
            self.tb.add_scalar("lr", lr, iteration)

    def last(self) -> dict:
        return {k: float(v) for k, v in self.rows[-1].items() if k in LOSS_NAMES} if self.rows else {}

    def write(self) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_path(self.csv_path) as tmp:
            tmp.write_text(buf.getvalue())
        plot = plot_losses(self.rows)
        if plot is not None:
            with atomic_path(self.png_path) as tmp:
                plot.save(tmp, "PNG")
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


_COLOURS = {"D_A": (31, 119, 180), "G_A": (255, 127, 14), "cycle_A": (44, 160, 44), "idt_A": (214, 39, 40),
            "D_B": (148, 103, 189), "G_B": (140, 86, 75), "cycle_B": (227, 119, 194), "idt_B": (127, 127, 127)}


def plot_losses(rows: list[dict], size: tuple[int, int] = (900, 500)) -> Optional[Image.Image]:
    """Each loss against iterations: a plain line chart drawn with Pillow."""
    if len(rows) < 2:
        return None
    w, h = size
    left, right, top, bottom = 60, 110, 20, 40
    its = np.array([float(r["iteration"]) for r in rows])
    series = {k: np.array([float(r[k]) for r in rows]) for k in LOSS_NAMES}
    series = {k: v for k, v in series.items() if np.isfinite(v).all() and np.abs(v).max() > 0}
    if not series:
        return None
    ymax = max(float(v.max()) for v in series.values()) * 1.05
    x0, x1 = its.min(), max(its.max(), its.min() + 1)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    py = lambda y: top + (1 - y / ymax) * (h - top - bottom)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for frac in np.linspace(0, 1, 5):
        y = ymax * frac
        d.line([left - 4, py(y), left, py(y)], fill="black")
        d.text((4, py(y) - 6), f"{y:.3g}", fill="black")
        x = x0 + (x1 - x0) * frac
        d.line([px(x), h - bottom, px(x), h - bottom + 4], fill="black")
        d.text((px(x) - 12, h - bottom + 8), f"{x:.0f}", fill="black")
    d.text(((w - right) // 2, h - 14), "iteration", fill="black")
    for n, (k, v) in enumerate(series.items()):
        d.line([(px(x), py(y)) for x, y in zip(its, v)], fill=_COLOURS[k], width=2)
        d.line([w - right + 10, top + 10 + 16 * n, w - right + 30, top + 10 + 16 * n], fill=_COLOURS[k], width=3)
        d.text((w - right + 35, top + 4 + 16 * n), k, fill="black")
    return img


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] CHW -> HxWx3 uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def save_grid(path: Path, rows: list[list[torch.Tensor]]) -> None:
    """One PNG: each row is [real, translated, reconstructed] for one sample image."""
    grid = np.concatenate([np.concatenate([to_uint8(t) for t in row], axis=1) for row in rows], axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, "PNG")


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
