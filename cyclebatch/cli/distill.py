"""`cyclebatch distill`: a small, fast student of any model, trained on the user's own photos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import check_settings, fail, log_line, run_finished, warn_line


def distill_cmd(
    teacher: Optional[str] = typer.Argument(None, help="The model to distil: zoo name, file, folder or training run."),
    photos: Optional[Path] = typer.Argument(None, help="Photos of the teacher's input domain (searched "
                                            "recursively); the teacher's outputs for them are the targets."),
    name: str = typer.Option(..., "--name", "-n", help="Run name: the student goes to RUNS_DIR/NAME/ and loads "
                             "as NAME in run, video and export."),
    size: str = typer.Option("small", "--size", help="small (<= 1/10 of the teacher's MACs and parameters), "
                             "tiny (<= 1/25), or a shape NGFxBLOCKS such as 24x6 (width of the first layer, "
                             "residual blocks)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Time budget of the whole run (teacher "
                                            "outputs, training, scoring); the best held-out student is kept. "
                                            "Default 30, unless --iterations is given."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Train exactly this many iterations "
                                             "instead of a time budget."),
    val: Optional[Path] = typer.Option(None, "--val", help="Held-out photos to score the student on (default: "
                                       "every fifth photo is held out, at most 10)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Parent folder of runs."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run NAME from its latest checkpoint."),
    direction: str = typer.Option("AtoB", "--direction", help="The teacher's direction, for a run holding both."),
    crops: int = typer.Option(0, "--crops", help="Teacher-labelled crops (0: 48 per photo, more for long runs so that each is drawn at most ~20 times; 128 to 8192)."),
    crop_size: int = typer.Option(128, "--crop-size", help="Training crop size."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Crops per iteration."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (cosine decay to 0)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: crops and batches."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CPUs with bf16 units and on CUDA, "
                                  "else fp32), fp32, bf16, fp16."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Stop (with a checkpoint) at this "
                                            "iteration; --resume continues."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Distil a model into a student 10x+ cheaper that keeps its look: trained on your photos to reproduce the
    teacher's outputs, scored on held-out photos. Ctrl-C saves; --resume continues."""
    from ..train.distill import distill
    from ..train.distill_config import DistillConfig

    if not resume and (teacher is None or photos is None):
        fail("give the teacher model and a folder of photos, or --resume to continue a run", 2)
    config = DistillConfig(
        teacher=teacher or "", photos=str(photos or ""), name=name, runs_dir=str(runs_dir), size=size,
        direction=direction, val=str(val or ""), minutes=minutes, iterations=iterations, crops=crops,
        crop_size=crop_size, batch_size=batch_size, lr=lr, seed=seed, device=device, precision=precision,
        max_iterations=max_iters, resume=resume, progress=not quiet)
    check_settings(config)
    result = distill(config, log=log_line, warn=warn_line)
    run_finished(result.summary(), "student", result.run_dir, runs_dir)
    if result.interrupted:
        raise typer.Exit(130)
