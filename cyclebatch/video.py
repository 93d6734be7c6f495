"""Translating videos: `translate_video`, the library API behind `cyclebatch video`.

The work is split by seam: video_sources.py (decoding, rotation, clips, colour tags), video_sinks.py
(encoders, audio, frame folders), video_pipeline.py (the threads: decode, model, finish, encode),
video_device.py (colour conversion on the GPU), video_finish.py (working size, stabiliser, comparison,
upscale) and temporal.py (the stabiliser itself). Decisions:

- Timestamps: every output frame keeps its input PTS and time base, so frame count, frame rate and
  variable frame rate survive. A clip (`start`) is shifted to begin at 0.
- Rotation: frames are written upright (pixels rotated by the display matrix) and the output carries
  no rotation metadata, so every player shows the same picture.
- Odd sizes: H.264/HEVC with 4:2:0 chroma can only crop in steps of 2 pixels, so an odd width or height
  is padded by one replicated edge row/column; nothing is scaled, the picture is not distorted.
- Colour: the input's matrix, range, primaries and transfer are used for both conversions and tagged on
  the output (untagged input: FFmpeg's BT.601 default, output untagged too).
- Audio: every audio stream is copied packet by packet when the output container accepts its codec,
  otherwise re-encoded to AAC.
- Output: written under a temporary name and renamed at the end (also for a folder of frames).
- Temporal consistency (`temporal`): "flow" (default) stabilises the translations after the model along
  the input's optical flow (temporal.py), in the pipeline's finishing thread; "stats" shares InstanceNorm
  statistics across the frames of a shot (stabilize.py), tiled frames included; "off" gives every frame
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import CycleBatchError
from .fileio import atomic_path, location_problem, sweep_dead_temps_of
from .video_finish import Finisher, Resizer, check_temporal
from .video_pipeline import run_pipeline
from .video_sinks import (FRAME_SUFFIX, FolderSink, VideoSink, atomic_folder, available_encoders,  # noqa: F401
                          encoder_options, is_frame_folder)
from .video_sources import DEFAULT_FOLDER_FPS, FolderSource, Frame, VideoSource, open_source  # noqa: F401


@dataclass
class VideoResult:
    frames: int
    seconds: float
    output: Path
    scene_cuts: int = 0
    temporal: str = "off"
    size: Optional[tuple[int, int]] = None  # (w, h) of the frames the model saw
    state_bytes: int = 0  # the stabiliser's largest state (one frame's worth, whatever the length)


def translate_video(src: str | Path, dst: str | Path, translator, *, codec: str = "libx264", crf: int = 18,
                    preset: str = "medium", start: float = 0.0, duration: Optional[float] = None,
                    fps: Optional[float] = None, temporal: str = "flow", stabilize: Optional[bool] = None,
                    max_size: Optional[int] = None, scale: Optional[float] = None, upscale: bool = False,
                    compare: Optional[str | Path] = None,
                    progress: Optional[Callable[[int, Optional[int]], None]] = None,
                    colour_on_device: Optional[bool] = None) -> VideoResult:
    """Translate every frame of `src` (a video file or a folder of frames) into `dst`.

    `translator` is an `engine.Translator` (anything with `translate_batch` and `auto_batch_size`); built
    with compile=True, every pass keeps one shape (the last batch is padded) so it compiles once.
    `dst` is a video file (its suffix picks the container) or a folder for numbered PNG frames.
    `temporal`: "flow" (default), "stats" or "off" (see the module docstring); `stabilize=False` is the old
    spelling of "off" (and True of "stats").
    `max_size`, `scale`: the working resolution, as in `run`; the output is at that size unless `upscale`.
    `compare`: a second video (or frame folder): input | model output | final, side by side.
    `progress(done, total_or_None)` is called once before the first batch and after every batch.
    `colour_on_device`: YUV <-> RGB with torch on the translator's device (colour.py) instead of FFmpeg on
    the CPU; default: on CUDA only (on a CPU swscale is many times faster).
    """
    if stabilize is not None:
        temporal = "stats" if stabilize else "off"
    check_temporal(temporal)
    src, dst = Path(src), Path(dst)
    outputs = [dst] + ([Path(compare)] if compare is not None else [])
    for out in outputs:
        if src.resolve() == out.resolve():
            raise CycleBatchError(f"{out}: the output would overwrite the input")
    if compare is not None and Path(compare).resolve() == dst.resolve():
        raise CycleBatchError(f"{compare}: the comparison would overwrite the output")
    source = open_source(src, start, duration, fps)
    for out in outputs:
        sweep_dead_temps_of(out)  # a killed earlier attempt at this same output
    if colour_on_device is None:
        colour_on_device = getattr(getattr(translator, "device", None), "type", None) == "cuda"
    colour_on_device = colour_on_device and hasattr(translator, "model_input")  # not for a stand-in
    resizer = Resizer(max_size, scale, even_sides=not is_frame_folder(dst)) if (max_size or scale) else None
    finisher = None
    if temporal.startswith("flow") or compare is not None or (upscale and resizer is not None):
        finisher = Finisher(temporal, compare=compare is not None, resizer=resizer, upscale=upscale)
    t0 = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            sinks = [_open_sink(stack, out, source, codec, crf, preset) for out in outputs]
            n, cuts = run_pipeline(source, sinks, translator, shared_stats=temporal in ("stats", "flow+stats"),
                                   prepare=resizer, finish=finisher, keep_input=finisher is not None,
                                   progress=progress, colour_on_device=colour_on_device)
    except OSError as e:  # a full disk or a read-only folder: one line; the partial output is already gone
        problem = location_problem(e, dst)
        if problem is None:
            raise
        raise CycleBatchError(f"{problem}; {dst} was not written") from None
    finally:
        source.close()
        if finisher is not None:
            finisher.close()
    if finisher is not None and finisher.stab is not None and temporal == "flow":
        cuts = finisher.cuts
    return VideoResult(n, time.perf_counter() - t0, dst, cuts, temporal,
                       resizer.work_size if resizer is not None else None,
                       finisher.max_state_bytes if finisher is not None else 0)


def _open_sink(stack: contextlib.ExitStack, out: Path, source, codec: str, crf: int, preset: str):
    """A sink writing under a temporary name that `stack` renames into place on success (removes on failure)."""
    if is_frame_folder(out):
        return FolderSink(stack.enter_context(atomic_folder(out)))
    try:
        tmp = stack.enter_context(atomic_path(out))
    except OSError as e:
        raise CycleBatchError(f"{out}: cannot write here ({e.strerror or str(e)})") from None
    return VideoSink(tmp, source, codec, crf, preset, label=out)
