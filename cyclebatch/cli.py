"""The `cyclebatch` command: a thin Typer layer over the library API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import CycleBatchError

app = typer.Typer(
    help="Unpaired image-to-image translation with CycleGAN generators, at batch scale.",
    rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="List, download, inspect and convert models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
    from .registry import ZOO, cached_path, local_models

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
        table.add_row(name, "AtoB and BtoA" if kind == "run" else "-", f"{kind}: {path}", "local", _fmt_size(size))
    out.print(table)


@models_app.command("download")
def models_download(names: List[str] = typer.Argument(..., help="Zoo names or aliases."),
                    quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Download zoo models into the cache (verified, atomic; safe to interrupt and re-run)."""
    from .registry import ensure_cached, lookup

    failed = 0
    for name in names:
        w = lookup(name)
        if w is None:
            err.print(f"[bold red]error:[/] '{name}' is not a zoo name (see `cyclebatch models list`)")
            failed += 1
            continue
        try:
            path = ensure_cached(w, quiet=quiet)
            if not quiet:
                out.print(f"{w.name}: {path}")
        except CycleBatchError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            failed += 1
    raise typer.Exit(1 if failed else 0)


@models_app.command("info")
def models_info(model: str = typer.Argument(..., help="Zoo name, run name, folder or checkpoint file."),
                direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA.")) -> None:
    """Architecture, parameter count and metadata of a model."""
    from .registry import load_generator, resolve

    path = resolve(model, direction)
    net = load_generator(model, direction)
    n = sum(p.numel() for p in net.parameters())
    table = Table(show_header=False, box=None)
    table.add_row("file", str(path))
    table.add_row("architecture", f"{net.config.name}, ngf {net.config.ngf}, "
                  f"{net.config.in_channels}->{net.config.out_channels} channels, "
                  f"{'affine' if net.config.affine_norm else 'plain'} InstanceNorm, "
                  f"{'dropout' if net.config.dropout else 'no dropout'}")
    table.add_row("parameters", f"{n:,} ({n / 1e6:.3f} M)")
    for k, v in sorted(net.metadata.items()):
        if k not in ("architecture", "format", "format_version", "source"):
            table.add_row(k, str(v))
    out.print(table)


@models_app.command("convert")
def models_convert(src: str = typer.Argument(..., help="Any readable model: name, run, folder or file."),
                   dst: Path = typer.Argument(..., help="Output .safetensors file."),
                   direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output.")) -> None:
    """Write cyclebatch's own format (safetensors + JSON metadata) from any readable checkpoint."""
    from .checkpoints import save_generator
    from .registry import load_generator

    if dst.suffix != ".safetensors":
        fail(f"{dst}: the output must end in .safetensors", 2)
    if dst.exists() and not overwrite:
        fail(f"{dst}: exists; pass --overwrite to replace it")
    net = load_generator(src, direction)
    meta = {"direction": net.metadata.get("direction", direction), "converted_from": str(net.metadata.get("source", src))}
    save_generator(net, dst, meta)
    out.print(f"wrote {dst} ({net.config.name})")


@app.command("video")
def video(src: Path = typer.Argument(..., help="Input video, or a folder of frames."),
          dst: Path = typer.Argument(..., help="Output video (suffix picks the container), or a folder for PNG frames."),
          model: str = typer.Option("vintage", "--model", "-m", help="Zoo name, run name, folder or checkpoint file."),
          direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
          device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
          precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16."),
          batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Frames per forward pass (default: from memory)."),
          codec: str = typer.Option("libx264", "--codec", help="Video encoder (libx264, libx265, libvpx-vp9, ...)."),
          crf: int = typer.Option(18, "--crf", min=0, max=63, help="Quality: lower is better and bigger."),
          preset: str = typer.Option("medium", "--preset", help="x264/x265 speed preset."),
          start: float = typer.Option(0.0, "--start", min=0, help="Clip start, seconds."),
          duration: Optional[float] = typer.Option(None, "--duration", min=0, help="Clip length, seconds."),
          fps: Optional[float] = typer.Option(None, "--fps", min=0.001, help="Frame rate of a folder of frames (default 25)."),
          stabilize: bool = typer.Option(False, "--stabilize",
                                         help="Share InstanceNorm statistics across the frames of a shot."),
          quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Translate every frame of a video; keeps frame timing, audio and rotation. Writes atomically."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .engine import Translator
    from .registry import load_generator
    from .video import translate_video

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[fps]} frames/s"), TimeRemainingColumn(), console=err,
                   disable=quiet, transient=True)
    t0 = [0.0]

    def progress(done: int, total: Optional[int]) -> None:
        rate = done / max(1e-9, time.perf_counter() - t0[0])
        bar.update(task, completed=done, total=max(total or 0, done) or None, fps=f"{rate:.1f}")

    try:
        translator = Translator(load_generator(model, direction, quiet=quiet), device=device,
                                precision=precision, batch_size=batch_size)
        with bar:
            task = bar.add_task(f"{src.name}", total=None, fps="-")
            t0[0] = time.perf_counter()
            res = translate_video(src, dst, translator, codec=codec, crf=crf, preset=preset, start=start,
                                  duration=duration, fps=fps, stabilize=stabilize, progress=progress)
    except KeyboardInterrupt:
        fail(f"interrupted: {dst} was not written", 130)
    except (RuntimeError, MemoryError) as e:  # e.g. out of memory: say so in one line, leave no output
        fail(f"{src}: translation failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
             f"{dst} was not written")
    if not quiet:
        out.print(f"wrote {dst}: {res.frames} frames in {res.seconds:.1f} s "
                  f"({res.frames / max(res.seconds, 1e-9):.1f} frames/s, {translator.precision} on {translator.device})",
                  highlight=False)


# ---------------------------------------------------------------- entry point

def main() -> None:
    try:
        app(standalone_mode=True)
    except CycleBatchError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
