"""What a distillation run shows while it runs and leaves behind: the progress bar with its ETA, status.json
(`cyclebatch runs status`), losses.csv and scores.csv, the held-out samples (input | teacher | student) and
report.html."""

from __future__ import annotations

import csv
import io
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..io.htmlpage import Page, data_uri
from .failure import writing
from .status import StatusWriter

SAMPLE_ROWS = 3  # held-out photos in a sample image
SAMPLE_HEIGHT = 256  # px a row
_SAMPLE_FILE = re.compile(r"score_(\d+)\.png$")


class DistillReport:
    def __init__(self, run_dir: Path, config, teacher_info: dict):
        self.run_dir, self.config, self.teacher_info = run_dir, config, teacher_info
        self.status_writer: Optional[StatusWriter] = None
        self._plan: Optional[int] = None
        self._iteration = 0
        self.best: dict = {}  # the best held-out score so far (a resumed run sets it from its checkpoint)

    # ------------------------------------------------------------ while it runs

    @contextmanager
    def progress(self, total: Optional[int], done: int, what: str = "student"):
        bar = _Bar(self.config.progress, total, done, what)
        with bar:
            yield bar

    def iteration(self, iteration: int, loss: float, lr: float, plan: Optional[int]) -> None:
        if self.status_writer is None or plan != self._plan:
            self._plan = plan
            self.status_writer = StatusWriter(self.run_dir, ("l1",), 1, plan or iteration, None)
            if self.best:  # a new writer (a resume, the plan made) keeps the score `runs status` shows
                self.status_writer.extra["held_out"] = self.best
        self._iteration = iteration
        self.status_writer.iteration(0, iteration, iteration, [loss], lr)

    def status(self, state: str, message: str = "") -> None:
        if self.status_writer is None:
            return
        w = self.status_writer
        it = self._iteration
        try:
            w.write(state, 0 if state == "training" else 1, it if state == "training" else 0, it, 0.0, message)
        except OSError:  # a courtesy: a full disk is reported by what failed first
            pass

    # ------------------------------------------------------------ files

    def samples(self, iteration: int, held, outputs: Sequence[np.ndarray]) -> Path:
        rows = []
        for x, teacher, student in list(zip(held.inputs, held.targets, outputs))[:SAMPLE_ROWS]:
            h, w = x.shape[:2]
            size = (max(1, round(w * SAMPLE_HEIGHT / h)), SAMPLE_HEIGHT)
            rows.append(np.concatenate([np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC))
                                        for a in (x, teacher, student)], axis=1))
        width = max(r.shape[1] for r in rows)
        grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
        png = io.BytesIO()
        Image.fromarray(grid).save(png, "PNG")
        path = self.run_dir / "samples" / f"score_{iteration:06d}.png"
        with writing(path) as tmp:
            tmp.write_bytes(png.getvalue())
        return path

    def write(self, state: str, st: dict) -> None:
        """losses.csv, scores.csv and report.html from the run's state `st`."""
        _write_csv(self.run_dir / "losses.csv", ("iteration", "l1", "lr"),
                   [(i, f"{v:.6g}", f"{lr:.6g}") for i, v, lr in st["losses"]])
        _write_csv(self.run_dir / "scores.csv", ("iteration", "psnr_db", "ssim"),
                   [(s["iteration"], s["psnr"], s["ssim"]) for s in [st["start"], *st["scores"]] if s])
        c, best = self.config, st["best"]
        self.best = best or self.best
        if best and self.status_writer is not None:  # `runs status` shows it from the next write on
            self.status_writer.extra["held_out"] = best
        page = Page(f"cyclebatch distillation {c.name}",
                    subtitle=f"{c.teacher} -> {c.size} student; iteration {st['iteration']} of {st['plan'] or '?'}; "
                             f"{state}, updated {time.strftime('%Y-%m-%d %H:%M:%S')}")
        if best:
            page.text("Fidelity", [f"Best held-out score: PSNR {best['psnr']:.2f} dB, SSIM {best['ssim']:.4f} to the "
                                   f"teacher's outputs, at iteration {best['iteration']} (the untrained student: "
                                   f"{st['start']['psnr']:.2f} dB). generator.safetensors holds that student."])
        frames = []
        for it, path in sorted(((int(m.group(1)), p) for p in (self.run_dir / "samples").glob("score_*.png")
                                if (m := _SAMPLE_FILE.search(p.name))), reverse=True):
            try:
                frames.append({"label": f"iteration {it}", "src": data_uri(_jpeg(path), "image/jpeg")})
            except OSError:
                continue
        page.gallery("Held-out photos at each new best: input | teacher | student", frames)
        page.entries("Held-out scores", ("iteration", "PSNR (dB)", "SSIM"),
                     [(s["iteration"], f"{s['psnr']:.2f}", f"{s['ssim']:.4f}") for s in [st["start"], *st["scores"]] if s])
        page.table("Configuration", [(k, "" if v is None else v) for k, v in c.to_dict().items()]
                   + [(f"teacher {k}", v) for k, v in self.teacher_info.items()])
        with writing(self.run_dir / "report.html") as tmp:
            tmp.write_text(page.html(), encoding="utf-8")


def _write_csv(path: Path, columns: Sequence[str], rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    with writing(path) as tmp:
        tmp.write_text(buf.getvalue())


def _jpeg(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=90, subsampling=0)
    return buf.getvalue()


class _Bar:
    """A rich bar with the time left, on a terminal only: the teacher's crops, then the student's iterations."""

    def __init__(self, enabled: bool, total: Optional[int], done: int, what: str):
        self.bar = self.task = None
        self.what = what
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(stderr=True)
            if console.is_terminal:
                self.bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.fields[info]}"), console=console)
                self.task = self.bar.add_task("", total=total, completed=done, info="")
        self._note = ""

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def plan(self, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=total)

    def note(self, text: str) -> None:
        self._note = text

    def advance(self, loss: Optional[float], n: int = 1) -> None:
        if self.bar is None:
            return
        info = "" if loss is None else f"L1 {loss:.4f}"
        self.bar.update(self.task, advance=n, info="  ".join(t for t in (info, self._note) if t))
