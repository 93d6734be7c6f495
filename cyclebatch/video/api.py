"""Translating videos: `translate_video`, the library API behind `cyclebatch video`.

The work is split by seam: video/sources.py (decoding, rotation, clips, colour tags), video/sinks.py
(encoders, audio, frame folders), video/pipeline.py (the threads: decode, model, finish, encode),
video/device.py (colour conversion on the GPU), video/finish.py (working size, stabiliser, comparison,
upscale) and temporal.py (the stabiliser itself). Decisions:

- Timestamps: every output frame keeps its input PTS and time base, so frame count, frame rate and
  variable frame rate survive. A clip (`start`) is shifted to begin at 0.
- Rotation: frames are written upright (pixels rotated by the display matrix) and the output carries
  no rotation metadata, so every player shows the same picture.
- Odd sizes: H.264/HEVC with 4:2:0 chroma can only crop in steps of 2 pixels, so an odd width or height
  is padded by one replicated edge row/column; nothing is scaled, the picture is not distorted.
- Colour: the input's matrix, range, primaries and transfer are used for both conversions and tagged on
  the output (untagged input: FFmpeg's BT.601 default, output untagged too).
- Audio: every audio stream is copied packet by packet when the output container's muxer takes it (tried
  on a scratch container in memory), otherwise re-encoded to a codec it takes (AAC, Opus for WebM, MP3 or
  PCM for AVI), or left out with a note (GIF).
- Output: written under a temporary name and renamed at the end (also for a folder of frames). An
  existing output is refused before any work (the CLI checks before it loads the model) unless
  `overwrite`; dead writers' temporaries in the output's folder are swept first.
- GIF: read like any video (frame delays are timestamps); written with a palette per frame, delays in
  1/100 s, the input GIF's loop count (a video's GIF loops forever).
- Temporal consistency (`temporal`): "flow" (default) stabilises the translations after the model along
  the input's optical flow (temporal.py), in the pipeline's finishing thread; "stats" shares InstanceNorm
  statistics across the frames of a shot (video/shared_stats.py), tiled frames included; "off" gives every frame
  exactly what `run` gives it. "flow+stats" (flow on the shared-statistics output) is there to be
  measured: it drifted and trailed more than flow alone (benchmarks/bench_temporal.py), so flow runs on
  per-frame translations.
- Working size: `max_size` / `scale` as `run` has them (output at that size, even sides for a video);
  `upscale` brings the output back to the input's size after translation (Lanczos).
- `compare`: a second output, input | model output | final, side by side at the working size.
- GPU: on CUDA frames travel as yuv420p and are converted next to the model (colour.py, `DevicePath`);
  on a CPU FFmpeg converts. The stabiliser, the comparison and resizing need RGB frames on the CPU, so
  with any of them FFmpeg converts there too. A compiled model sees one batch shape (the last batch is
  padded).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import CycleBatchError, first_line
from ..io.files import atomic_path, location_problem, sweep_dead_temps
# video_finish and video_pipeline (the stabiliser, torch) are imported by translate_video: the checks
# below answer before torch loads.
from .sinks import (FRAME_SUFFIX, FolderSink, VideoSink, atomic_folder, available_encoders,  # noqa: F401
                          encoder_options, is_frame_folder)
from .sources import DEFAULT_FOLDER_FPS, FolderSource, Frame, VideoSource, open_source  # noqa: F401


@dataclass
class VideoResult:
    frames: int
    seconds: float
    output: Path
    scene_cuts: int = 0
    temporal: str = "off"
    size: Optional[tuple[int, int]] = None  # (w, h) of the frames the model saw
    state_bytes: int = 0  # the stabiliser's largest state (one frame's worth, whatever the length)


FRAME_NAME = re.compile(r"\d{6,}" + re.escape(FRAME_SUFFIX))  # what FolderSink writes: 000001.png, ...


def check_output(out: Path, overwrite: bool = False) -> None:
    """Refuse an output that exists (unless `overwrite`), before any work. A frame folder is "existing" when
    it holds anything; even with `overwrite` only a folder of nothing but frames is replaced, so a folder
    of the user's own files (a home directory named by mistake) is never emptied."""
    if is_frame_folder(out):
        if not out.exists():
            return
        if not out.is_dir():
            raise CycleBatchError(f"{out}: exists and is not a folder; frames go to a folder "
                                  f"(a video needs a suffix such as .mp4)")
        entries = list(out.iterdir())
        if not entries:
            return
        if not overwrite:
            raise CycleBatchError(f"{out}: exists; pass --overwrite to replace it")
        others = [p.name for p in entries if not (FRAME_NAME.fullmatch(p.name) and p.is_file())]
        if others:
            raise CycleBatchError(f"{out}: holds more than frames ({others[0]}); --overwrite replaces only a "
                                  f"folder of frames")
        return
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise CycleBatchError(f"{out}: exists; pass --overwrite to replace it")
    if out.exists() and not out.is_file():  # /dev/null, a FIFO: the rename would replace the node itself
        raise CycleBatchError(f"{out}: not a regular file; a video goes to a new or regular file")


def check_video_job(src: str | Path, dst: str | Path, *, compare: Optional[str | Path] = None,
                    overwrite: bool = False, start: float = 0.0, duration: Optional[float] = None,
                    fps: Optional[float] = None) -> None:
    """The checks that need no model, made at once (the CLI runs them before it loads one): the input is a
    video (or a folder of frames) that opens and decodes its first frame; no output would overwrite the
    input, another output or (without `overwrite`) an existing file."""
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, compare, overwrite)
    open_source(src, start, duration, fps).close()


def _check_paths(src: Path, dst: Path, compare, overwrite: bool) -> list[Path]:
    outputs = [dst] + ([Path(compare)] if compare is not None else [])
    for out in outputs:
        if src.resolve() == out.resolve():
            raise CycleBatchError(f"{out}: the output would overwrite the input")
    if compare is not None and Path(compare).resolve() == dst.resolve():
        raise CycleBatchError(f"{compare}: the comparison would overwrite the output")
    for out in outputs:
        check_output(out, overwrite)
    return outputs


def translate_video(src: str | Path, dst: str | Path, translator, *, codec: Optional[str] = None, crf: int = 18,
                    preset: str = "medium", start: float = 0.0, duration: Optional[float] = None,
                    fps: Optional[float] = None, temporal: str = "flow", stabilize: Optional[bool] = None,
                    max_size: Optional[int] = None, scale: Optional[float] = None, upscale: bool = False,
                    compare: Optional[str | Path] = None,
                    progress: Optional[Callable[[int, Optional[int]], None]] = None,
                    colour_on_device: Optional[bool] = None, overwrite: bool = False,
                    notify: Optional[Callable[[str], None]] = None) -> VideoResult:
    """Translate every frame of `src` (a video file or a folder of frames) into `dst`.

    `translator` is an `engine.Translator` (anything with `translate_batch` and `auto_batch_size`); built
    with compile=True, every pass keeps one shape (the last batch is padded) so it compiles once.
    `dst` is a video file (its suffix picks the container) or a folder for numbered PNG frames; an existing
    one (or `compare`) is refused unless `overwrite`, and then replaced only once the new one is complete.
    `codec`: the video encoder; None: libx264, or what the container needs (VP9 for .webm, GIF for .gif).
    `temporal`: "flow" (default), "stats" or "off" (see the module docstring); `stabilize=False` is the old
    spelling of "off" (and True of "stats").
    `max_size`, `scale`: the working resolution, as in `run`; the output is at that size unless `upscale`.
    `compare`: a second video (or frame folder): input | model output | final, side by side.
    `progress(done, total_or_None)` is called once before the first batch and after every batch.
    `colour_on_device`: YUV <-> RGB with torch on the translator's device (colour.py) instead of FFmpeg on
    the CPU; default: on CUDA only (on a CPU swscale is many times faster).
    `notify(line)`: told what is left out (an audio stream no codec of the container can carry).
    """
    from .finish import Finisher, Resizer, check_temporal
    from .pipeline import run_pipeline

    if stabilize is not None:
        temporal = "stats" if stabilize else "off"
    check_temporal(temporal)
    src, dst = Path(src), Path(dst)
    outputs = _check_paths(src, dst, compare, overwrite)
    source = open_source(src, start, duration, fps)
    for out in outputs:
        # What killed earlier runs left in the output's folder; not below it: that can be a home directory.
        sweep_dead_temps(out.parent, recursive=False)
    if colour_on_device is None:
        colour_on_device = getattr(getattr(translator, "device", None), "type", None) == "cuda"
    colour_on_device = colour_on_device and hasattr(translator, "model_input")  # not for a stand-in
    colour_on_device = colour_on_device and not any(o.suffix.lower() == ".gif" for o in outputs)  # GIF: RGB
    resizer = Resizer(max_size, scale, even_sides=not is_frame_folder(dst)) if (max_size or scale) else None
    finisher = None
    if temporal.startswith("flow") or compare is not None or (upscale and resizer is not None):
        finisher = Finisher(temporal, compare=compare is not None, resizer=resizer, upscale=upscale)
    t0 = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            sinks = [_open_sink(stack, out, source, codec, crf, preset, overwrite, notify) for out in outputs]
            n, cuts = run_pipeline(source, sinks, translator, shared_stats=temporal in ("stats", "flow+stats"),
                                   prepare=resizer, finish=finisher, keep_input=finisher is not None,
                                   progress=progress, colour_on_device=colour_on_device)
    except OSError as e:  # a full disk or a read-only folder: one line; the partial output is already gone
        out = getattr(e, "cyclebatch_output", dst)
        problem = location_problem(e, out)  # with the space free when the write failed (the pipeline noted it)
        if problem is None:
            raise _write_error(e, out, src) from None
        written = f"{dst} was not written" if compare is None else f"neither {dst} nor {compare} was written"
        raise CycleBatchError(f"{problem}; {written}") from None
    except CycleBatchError as e:
        if "too small for this model" not in str(e):  # the engine's refusal names no file: name the input
            raise
        hint = " (the working size that --max-size/--scale gave)" if resizer is not None else ""
        raise CycleBatchError(f"{src}: {e}{hint}; {dst} was not written") from None
    except Exception as e:
        raise _write_error(e, getattr(e, "cyclebatch_output", dst), src) from None
    finally:
        source.close()
        if finisher is not None:
            finisher.close()
    if finisher is not None and finisher.stab is not None and temporal == "flow":
        cuts = finisher.cuts
    return VideoResult(n, time.perf_counter() - t0, dst, cuts, temporal,
                       resizer.work_size if resizer is not None else None,
                       finisher.max_state_bytes if finisher is not None else 0)


def _write_error(e: BaseException, out: Path, src: Path) -> BaseException:
    """FFmpeg's error mid-way as one line naming the file it was about (the input when its reader failed:
    the audio is demuxed as the video is written); anything else unchanged."""
    import av

    if not isinstance(e, av.FFmpegError):
        return e
    reason = getattr(e, "strerror", None) or first_line(e)
    if getattr(e, "filename", None) and Path(e.filename) == src:
        return CycleBatchError(f"{src}: cannot read it (FFmpeg: {reason}); {out} was not written")
    return CycleBatchError(f"{out}: cannot write it (FFmpeg: {reason}); nothing was written")


def _open_sink(stack: contextlib.ExitStack, out: Path, source, codec: Optional[str], crf: int, preset: str,
               overwrite: bool = False, notify=None):
    """A sink writing under a temporary name that `stack` renames into place on success (removes on failure)."""
    if is_frame_folder(out):
        return FolderSink(stack.enter_context(atomic_folder(out, replace=overwrite)), label=out)
    try:
        tmp = stack.enter_context(atomic_path(out))
    except OSError as e:
        raise CycleBatchError(f"{out}: cannot write here ({e.strerror or str(e)})") from None
    return VideoSink(tmp, source, codec, crf, preset, label=out, notify=notify)
