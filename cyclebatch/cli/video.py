"""`cyclebatch video`: videos, frame folders and animated GIFs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (BATCHNORM_HELP, MEMORY_HELP, TILE_HELP, _sigterm_as_interrupt, err, fail, note, out, parse_bytes)


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
