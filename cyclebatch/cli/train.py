"""`cyclebatch train` and `cyclebatch runs status`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import CycleBatchError
from .common import check_settings, fail, log_line, out, plain, run_finished, warn_line


runs_app = typer.Typer(help="Training runs: where one stands while it trains.", no_args_is_help=True)


def train_cmd(
    data_a: Optional[Path] = typer.Argument(None, help="Folder of domain A images (searched recursively)."),
    data_b: Optional[Path] = typer.Argument(None, help="Folder of domain B images."),
    val_a: Optional[Path] = typer.Option(None, "--val-a", help="Held-out A images: the first 4, centre-cropped, "
                                         "translated at every epoch end into the sample grids (with --val-b)."),
    val_b: Optional[Path] = typer.Option(None, "--val-b", help="Held-out B images (with --val-a)."),
    name: str = typer.Option(..., "--name", "-n", help="Run name: outputs go to RUNS_DIR/NAME/."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Parent folder of runs."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run NAME from its latest checkpoint "
                                "(its stored settings; data folders optional)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start the generators from any model "
                                            "(zoo name, run, folder, file)."),
    epochs: int = typer.Option(100, "--epochs", help="Epochs at the initial learning rate."),
    decay_epochs: int = typer.Option(100, "--decay-epochs", help="Further epochs, learning rate decaying linearly to 0."),
    lr: float = typer.Option(2e-4, "--lr", help="Adam learning rate (betas 0.5, 0.999)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Images per domain per iteration (per process)."),
    load_size: int = typer.Option(286, "--load-size", help="Resize to this before cropping."),
    crop_size: int = typer.Option(256, "--crop-size", help="Random crop size (the training input size)."),
    preprocess: str = typer.Option("resize_and_crop", "--preprocess",
                                   help="resize_and_crop (square), scale_width_and_crop or crop."),
    no_flip: bool = typer.Option(False, "--no-flip", help="No random horizontal flips."),
    ngf: int = typer.Option(64, "--ngf", help="Generator width."),
    n_blocks: int = typer.Option(9, "--n-blocks", help="Generator residual blocks (9 or 6 in the paper)."),
    ndf: int = typer.Option(64, "--ndf", help="Discriminator width."),
    lambda_cycle: float = typer.Option(10.0, "--lambda-cycle", help="Weight of the cycle-consistency L1 loss."),
    lambda_identity: float = typer.Option(0.5, "--lambda-identity", help="Identity loss weight, times lambda-cycle."),
    pool_size: int = typer.Option(50, "--pool-size", help="Generated images kept for the discriminators."),
    seed: int = typer.Option(0, "--seed", help="Random seed: initialisation, crops, flips and the pairing of A and B images."),
    save_every: int = typer.Option(5, "--save-every", help="Keep a numbered checkpoint every N epochs."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", "--precision",
                                  help="auto (CUDA: bf16 on Ampere and newer, else fp16; CPU: fp32), fp32, bf16, fp16."),
    workers: int = typer.Option(-1, "--workers", help="Image decoding processes (-1: up to 4)."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Stop (with a checkpoint) after this many "
                                            "iterations in all."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a CycleGAN on two folders of unpaired images (paper defaults). Ctrl-C saves; --resume continues.
    Watch it with `cyclebatch runs status NAME`, runs/NAME/report.html or TensorBoard (runs/NAME/tensorboard)."""
    from ..train import TrainConfig, train

    if not resume and (data_a is None or data_b is None):
        fail("give both data folders (domain A, domain B), or --resume to continue a run", 2)
    config = TrainConfig(
        data_a=str(data_a or ""), data_b=str(data_b or ""), val_a=str(val_a or ""), val_b=str(val_b or ""), name=name, runs_dir=str(runs_dir), init_from=init_from,
        epochs=epochs, decay_epochs=decay_epochs, lr=lr, batch_size=batch_size, load_size=load_size,
        crop_size=crop_size, preprocess=preprocess, flip=not no_flip, ngf=ngf, n_blocks=n_blocks, ndf=ndf,
        lambda_cycle=lambda_cycle, lambda_identity=lambda_identity, pool_size=pool_size, seed=seed,
        save_every=save_every, device=device, precision=precision, workers=workers, max_iterations=max_iters,
        resume=resume, progress=not quiet,
    )
    check_settings(config)
    result = train(config, log=log_line, warn=warn_line)
    run_finished(result.summary(), "generators", result.run_dir, runs_dir)
    if result.interrupted:
        raise typer.Exit(130)


@runs_app.command("status")
def runs_status(run: str = typer.Argument(..., help="Run name (under --runs-dir) or the run's folder."),
                runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Parent folder of runs."),
                as_json: bool = typer.Option(False, "--json", help="The status as JSON.")) -> None:
    """Epoch, iteration, current losses, seconds per iteration and time to finish of a run, also while it trains."""
    import json

    from ..train.status import describe, find_run, read_status

    try:
        doc = read_status(find_run(run, runs_dir))
    except CycleBatchError as e:
        fail(str(e))
    if as_json:
        out.print_json(json.dumps(doc))
    else:
        out.print("\n".join(plain(line) for line in describe(doc)), highlight=False, soft_wrap=True)
