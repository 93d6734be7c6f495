"""The `cyclebatch` command: a thin Typer layer over the library API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .. import __version__
from .common import (BATCHNORM_HELP, MEMORY_HELP, TILE_HELP, _sigterm_as_interrupt, check_output_file, err,
                         error_line, fail, note, out, parse_bytes, plain, writing)
from .run import run
from ..errors import CycleBatchError

app = typer.Typer(
    help="Unpaired image-to-image translation with CycleGAN generators, at batch scale.",
    rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="List, download, inspect and convert models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        out.print(f"cyclebatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    pass


# ---------------------------------------------------------------- models

def _fmt_size(n: Optional[int]) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


@models_app.command("list")
def models_list() -> None:
    """The zoo, dropped-in files and training runs: name, source, cached or not, size, direction."""
    from ..models.registry import ZOO, cached_path, local_models

    table = Table(title="cyclebatch models", title_justify="left")
    for col in ("name", "translates", "source", "cached", "size"):
        table.add_column(col)
    for w in ZOO:
        p = cached_path(w)
        name = w.name + (f" ({', '.join(w.aliases)})" if w.aliases else "")
        size = p.stat().st_size if p.exists() else w.size
        table.add_row(name, w.translates, w.source, "yes" if p.exists() else "no", _fmt_size(size))
    for name, path, kind in local_models():
        size = path.stat().st_size if path.is_file() else None
        table.add_row(plain(name), "AtoB and BtoA" if kind == "run" else "-", f"{kind}: {plain(path)}", "local",
                      _fmt_size(size))
    out.print(table)


@models_app.command("download")
def models_download(names: List[str] = typer.Argument(..., help="Zoo names or aliases."),
                    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress; errors only.")) -> None:
    """Download zoo models into the cache (verified, atomic; safe to interrupt and re-run)."""
    from ..models.registry import ensure_cached, lookup

    failed = 0
    for name in names:
        w = lookup(name)
        if w is None:
            error_line(f"'{name}' is not a zoo name (see `cyclebatch models list`)")
            failed += 1
            continue
        try:
            path = ensure_cached(w, quiet=quiet)
            if not quiet:
                out.print(f"{w.name}: {plain(path)}", highlight=False)
        except CycleBatchError as e:
            error_line(str(e))
            failed += 1
    raise typer.Exit(1 if failed else 0)


@models_app.command("info")
def models_info(model: str = typer.Argument(..., help="Zoo name, run name, folder or checkpoint file."),
                direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA.")) -> None:
    """Architecture, parameter count and metadata of a model."""
    from ..models.registry import load_generator, resolve

    path = resolve(model, direction)
    net = load_generator(model, direction)
    n = sum(p.numel() for p in net.parameters())
    table = Table(show_header=False, box=None)
    table.add_row("file", plain(path))
    table.add_row("architecture", net.config.describe())
    table.add_row("parameters", f"{n:,} ({n / 1e6:.3f} M)")
    for k, v in sorted(net.metadata.items()):
        if k not in ("architecture", "format", "format_version", "source"):
            table.add_row(plain(k), plain(v))
    out.print(table)


@models_app.command("convert")
def models_convert(src: str = typer.Argument(..., help="Any readable model: name, run, folder or file."),
                   dst: Path = typer.Argument(..., help="Output .safetensors file."),
                   direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output.")) -> None:
    """Write cyclebatch's own format (safetensors + JSON metadata) from any readable checkpoint."""
    from ..models.checkpoints import save_generator
    from ..models.registry import load_generator

    if dst.suffix != ".safetensors":
        fail(f"{dst}: the output must end in .safetensors", 2)
    check_output_file(dst, overwrite)
    net = load_generator(src, direction)
    meta = {"direction": net.metadata.get("direction", direction), "converted_from": str(net.metadata.get("source", src))}
    with writing(dst):
        save_generator(net, dst, meta)
    out.print(f"wrote {plain(dst)} ({net.config.name})", highlight=False)


# ---------------------------------------------------------------- run

# `run` lives in cli_run.py; registered here, in this place of the help's order.
app.command("run")(run)


# ---------------------------------------------------------------- train

@app.command("train")
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
    result = train(config, log=lambda msg: err.print(plain(msg), highlight=False, soft_wrap=True),
                   warn=lambda msg: err.print(f"[yellow]warning:[/] {plain(msg)}", highlight=False, soft_wrap=True))
    load_as = result.run_dir.name if runs_dir == Path("runs") else result.run_dir
    err.print(f"{plain(result.summary())}; generators in {plain(result.run_dir)} (load with: {plain(load_as)})",
              highlight=False, soft_wrap=True)
    if result.interrupted:
        raise typer.Exit(130)


runs_app = typer.Typer(help="Training runs: where one stands while it trains.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


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

# ---------------------------------------------------------------- export

@app.command("export")
def export_cmd(model: str = typer.Argument(..., help="Any model the registry can load: name, run, folder or file."),
               dst: Path = typer.Argument(..., help="Output file: .onnx (ONNX), .pt (TorchScript), .tflite (TFLite / "
                                               "LiteRT, phones) or .xml (OpenVINO IR, with its .bin)."),
               direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
               precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default) or fp16: half-precision "
                                                       "weights (float32 input and output stay).", show_default=False),
               fp16: bool = typer.Option(False, "--fp16", help="Same as --precision fp16."),
               quantize: Optional[str] = typer.Option(None, "--quantize", help=".tflite: int8 weights "
                                                      "(dynamic-range; see --calibrate).", show_default=False),
               calibrate: Optional[Path] = typer.Option(None, "--calibrate", help=".tflite with --quantize int8: a "
                                                        "folder of sample images to calibrate int8 activations.",
                                                        show_default=False),
               size: Optional[str] = typer.Option(None, "--size", help=".tflite: the fixed input size, N or WxH "
                                                  "(default: the model's training size, else 256).", show_default=False),
               opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17).", show_default=False),
               no_verify: bool = typer.Option(False, "--no-verify", help="Skip running the file against PyTorch."),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output.")) -> None:
    """Export a generator for ONNX runtimes, LibTorch, LiteRT (phones) or OpenVINO; verified against PyTorch on a real photo."""
    from ..export.options import check_options, parse_size

    try:
        fmt = check_options(dst, precision=precision or ("fp16" if fp16 else "fp32"), fp16=fp16, quantize=quantize,
                            calibrate=calibrate, size=size, opset=opset)
        fixed = parse_size(size) if size else None
    except CycleBatchError as e:
        fail(str(e), 2)
    for p in (dst, dst.with_suffix(".bin")) if fmt == "openvino" else (dst,):
        check_output_file(p, overwrite)
    from ..export.api import OPSET, export
    from ..models.registry import load_generator

    net = load_generator(model, direction)
    with writing(dst):
        r = export(net, dst, precision=precision or ("fp16" if fp16 else "fp32"), quantize=quantize,
                   calibrate=calibrate, size=fixed, opset=opset or OPSET, check=not no_verify, overwrite=overwrite,
                   source=model)
    notes = [net.config.name, f"{r.precision} {r.quantization}".strip()]
    if r.opset:
        notes.append(f"opset {r.opset}")
    if r.size:
        notes.append(f"input 1x{r.size[0]}x{r.size[1]}x3 NHWC")
    files = " + ".join(p.name for p in r.files[1:])
    out.print(f"wrote {plain(dst)}{f' (+ {plain(files)})' if files else ''} ({', '.join(notes)}, {r.bytes / 1e6:.1f} MB, "
              f"{r.seconds:.1f} s)", highlight=False, soft_wrap=True)
    if r.verified:
        floor = f" (floor {r.floor:g} dB)" if r.floor is not None else ""
        out.print(f"verified with {r.runtime} on {r.sample}: PSNR {r.psnr:.1f} dB{floor}, max |diff| {r.max_diff:.2e}, "
                  f"mean {r.mean_diff:.2e} (of the [0, 1] range)", highlight=False, soft_wrap=True)
    else:
        out.print("not verified (--no-verify)", highlight=False)

# ---------------------------------------------------------------- video

@app.command("video")
def video(src: Path = typer.Argument(..., help="Input video, or a folder of frames."),
          dst: Path = typer.Argument(..., help="Output video (suffix picks the container), or a folder for PNG frames."),
          model: str = typer.Option("vintage", "--model", "-m", help="Zoo name, run name, folder or checkpoint file."),
          direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
          device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
          precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16."),
          batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Frames per forward pass (default: from memory)."),
          compile: bool = typer.Option(False, "--compile", help="torch.compile the generator: compiled once for "
                                       "the video's frame size (pays off on long videos, on a GPU)."),
          codec: Optional[str] = typer.Option(None, "--codec", help="Video encoder: libx264 (default; libvpx-vp9 "
                                              "for .webm, gif for .gif), libx265, libvpx-vp9, ..., "
                                              "or h264_nvenc / hevc_nvenc on an NVIDIA GPU."),
          crf: int = typer.Option(18, "--crf", min=0, max=63, help="Quality: lower is better and bigger "
                                  "(NVENC: its constant-quality level cq, 0 = lossless)."),
          preset: str = typer.Option("medium", "--preset", help="x264/x265 speed preset (NVENC: p1..p7, "
                                     "or the x264 name mapped to them)."),
          start: float = typer.Option(0.0, "--start", min=0, help="Clip start, seconds."),
          duration: Optional[float] = typer.Option(None, "--duration", min=0, help="Clip length, seconds."),
          fps: Optional[float] = typer.Option(None, "--fps", min=0.001, help="Frame rate of a folder of frames (default 25)."),
          temporal: Optional[str] = typer.Option(None, "--temporal", help="Temporal consistency: flow (default: "
                                                 "the translations steadied along the input's optical flow), "
                                                 "stats (InstanceNorm statistics shared within a shot) or off "
                                                 "(each frame exactly as `run` translates it)."),
          no_stabilize: bool = typer.Option(False, "--no-stabilize", help="Same as --temporal off."),
          compare: Optional[Path] = typer.Option(None, "--compare", help="Also write a side-by-side video (or frame "
                                                 "folder): input | model output | final output."),
          max_size: Optional[int] = typer.Option(None, "--max-size", min=4, help="Working resolution: longest side "
                                                 "at most this (output at that size, even sides)."),
          scale: Optional[float] = typer.Option(None, "--scale", min=0.01, max=8.0, help="Working resolution as a "
                                                "factor (output at that size, even sides)."),
          upscale: bool = typer.Option(False, "--upscale", help="With --max-size/--scale: resize the output back to "
                                       "the input's size after translation (Lanczos)."),
          tile: Optional[int] = typer.Option(None, "--tile", min=32, help=TILE_HELP),
          max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MEMORY_HELP),
          batchnorm: str = typer.Option("running", "--batchnorm", help=BATCHNORM_HELP),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (and --compare "
                                         "file); the old one stays until the new one is complete."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line; errors only.")) -> None:
    """Translate every frame of a video; keeps frame timing, audio and rotation. Writes atomically."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..video.api import check_video_job

    if no_stabilize and temporal not in (None, "off"):
        fail(f"--no-stabilize is --temporal off; it cannot go with --temporal {temporal}")
    temporal = "off" if no_stabilize else (temporal or "flow")
    if upscale and not (max_size or scale):
        fail("--upscale brings a --max-size or --scale output back to the input's size; give one of them")
    # The input is a video and no output is in the way: said at once, before the model loads.
    check_video_job(src, dst, compare=compare, overwrite=overwrite, start=start, duration=duration, fps=fps)

    from ..engine.translator import Translator
    from ..models.registry import load_generator
    from ..video.api import translate_video
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[fps]} frames/s"), TextColumn("{task.fields[expected]}"),
                   TimeRemainingColumn(), console=err, disable=quiet or not err.is_terminal, transient=True)
    t0 = [0.0]

    def progress(done: int, total: Optional[int]) -> None:
        spent = time.perf_counter() - t0[0]
        rate = done / max(1e-9, spent)
        # The expected total once a few frames are in (the first batch carries the warm-up): shown early,
        # as a long video at full size on a CPU can take hours.
        expected = f"total ~{_duration(spent / done * total)}" if total and done else ""
        bar.update(task, completed=done, total=max(total or 0, done) or None, fps=f"{rate:.1f}" if done else "-",
                   expected=expected)

    _sigterm_as_interrupt()
    try:
        translator = Translator(load_generator(model, direction, quiet=quiet), device=device,
                                precision=precision, compile=compile, batch_size=batch_size, tile=tile,
                                max_memory=parse_bytes(max_memory), batchnorm=batchnorm, notify=note)
        with bar:
            task = bar.add_task(f"{src.name}", total=None, fps="-", expected="")
            t0[0] = time.perf_counter()
            res = translate_video(src, dst, translator, codec=codec, crf=crf, preset=preset, start=start,
                                  duration=duration, fps=fps, temporal=temporal, max_size=max_size, scale=scale,
                                  upscale=upscale, compare=compare, progress=progress, overwrite=overwrite,
                                  notify=note)
    except KeyboardInterrupt:
        fail(f"interrupted: {dst} was not written", 130)
    except (RuntimeError, MemoryError) as e:  # e.g. out of memory: say so in one line, leave no output
        fail(f"{src}: translation failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
             f"{dst} was not written")
    if not quiet:
        size = f", at {res.size[0]}x{res.size[1]}" if res.size else ""
        out.print(f"wrote {dst}: {res.frames} frames in {res.seconds:.1f} s "
                  f"({res.frames / max(res.seconds, 1e-9):.1f} frames/s, {translator.precision} on {translator.device}"
                  f"{size}, temporal {res.temporal})" + (f"; comparison in {compare}" if compare else ""),
                  highlight=False)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ---------------------------------------------------------------- entry point

def _plain_metavars(typer_app: typer.Typer) -> None:
    """Help that reads as a user expects: a flag shows no `<bool>` as if it took a value, and the usage line
    names the arguments in capitals (`{INPUTS}...`: Typer's braces mark a required one). Set once on every command's declared parameters."""
    import inspect

    from typer.models import ArgumentInfo, OptionInfo

    apps = [typer_app]
    while apps:
        a = apps.pop()
        apps += [g.typer_instance for g in a.registered_groups]
        for command in a.registered_commands:
            for p in inspect.signature(command.callback).parameters.values():
                info = p.default
                if isinstance(info, OptionInfo) and info.metavar is None and p.annotation in (bool, "bool"):
                    info.metavar = ""
                elif isinstance(info, ArgumentInfo) and info.metavar is None:
                    info.metavar = p.name.upper()  # Typer adds the "..." of a list itself


def main() -> None:
    _plain_metavars(app)
    if not err.is_terminal:
        # Typer boxes usage errors in a panel hard-wrapped at 80 columns; a log gets Click's plain lines.
        import typer.rich_utils

        typer.rich_utils.rich_format_error = lambda e: e.show()
    try:
        app(standalone_mode=True)
    except CycleBatchError as e:
        error_line(str(e))  # escaped: "pip install 'cyclebatch[openvino]'" is not markup
        sys.exit(1)
    except Exception as e:  # a case no code path foresaw: still one line; the traceback on request
        import os

        if os.environ.get("CYCLEBATCH_DEBUG"):
            raise
        if isinstance(e, OSError) and e.filename:
            error_line(f"{e.filename}: {e.strerror or e}")
        else:
            first = next((line for line in str(e).splitlines() if line.strip()), "")
            error_line(f"unexpected {type(e).__name__}{f': {first[:200]}' if first else ''} "
                       "(please report it; CYCLEBATCH_DEBUG=1 shows the traceback)")
        sys.exit(1)
