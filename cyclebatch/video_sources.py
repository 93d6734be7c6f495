"""Video input: the first video stream of a file (decoded, upright, clipped) or a folder of frames, as
`Frame`s in display order; the colour tags the output takes over from the input."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .errors import CycleBatchError
from .fileio import TMP_MARK
from .images import IMAGE_SUFFIXES, read_image

DEFAULT_FOLDER_FPS = 25


@dataclass
class Frame:
    """One frame: RGB pixels, or (GPU path) FFmpeg's yuv420p array as decoded, still in stored orientation."""

    rgb: Optional[np.ndarray]
    pts: int
    yuv: Optional[np.ndarray] = None
    thumb: Optional[np.ndarray] = None  # a few thousand RGB pixels of a yuv frame, for cut detection
    source: Optional[np.ndarray] = None  # the input RGB it was translated from, for the stabiliser downstream

    @property
    def size(self) -> tuple[int, int]:
        """Height and width of the stored pixels (a yuv frame's picture is 2/3 of its rows)."""
        if self.rgb is not None:
            return self.rgb.shape[0], self.rgb.shape[1]
        return self.yuv.shape[0] * 2 // 3, self.yuv.shape[1]


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def _colour_tags(frame) -> Optional[dict]:
    """Colour matrix, range, primaries and transfer of a decoded frame; None when the matrix is unspecified
    (then RGB goes to YUV with FFmpeg's default, BT.601, and the output stays untagged as the input was)."""
    tags = {k: int(getattr(frame, k, 0) or 0) for k in ("colorspace", "color_range", "color_primaries", "color_trc")}
    if tags["colorspace"] in (0, 2):  # RGB or unspecified
        return None
    tags["color_range"] = tags["color_range"] or 1  # unspecified range: limited, as FFmpeg assumes
    for k in ("color_primaries", "color_trc"):
        if tags[k] in (0, 2):  # reserved or unspecified: leave the output's unspecified too
            del tags[k]
    return tags



# ---------------------------------------------------------------- sources

def _tag_seconds(tag: Optional[str]) -> float:
    """Matroska's per-track DURATION tag, HH:MM:SS.fraction, in seconds (0 when absent or unreadable)."""
    try:
        h, m, sec = (tag or "").split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


class VideoSource:
    """The first video stream of a file: decoded, rotated upright, clipped to [start, start + duration)."""

    def __init__(self, path: Path, start: float = 0.0, duration: Optional[float] = None):
        import av

        self.path = path
        try:
            self.container = av.open(str(path), metadata_errors="ignore")
        except av.FFmpegError as e:
            raise CycleBatchError(f"{path}: not a readable video ({_short(e)})") from None
        c = self.container
        if not c.streams.video:
            kind = "an audio-only file" if c.streams.audio else "a file without streams"
            c.close()
            raise CycleBatchError(f"{path}: no video stream ({kind})")
        self.stream = s = c.streams.video[0]
        if s.codec_context is None:
            c.close()
            raise CycleBatchError(f"{path}: cannot decode its video codec (this FFmpeg has no decoder for it)")
        s.thread_type = "AUTO"
        self.time_base: Fraction = s.time_base or Fraction(1, 90000)
        self.rate: Fraction = s.average_rate or s.guessed_rate or Fraction(DEFAULT_FOLDER_FPS)
        self.start, self.duration = start, duration
        self.rotation = 0
        self.offset_pts = 0  # subtracted from every PTS (clip start)
        self.colour: Optional[dict] = None  # the first frame's colour tags, when it carries any
        self.yuv_colour: Optional[tuple[int, bool]] = None  # (matrix, full range) when frames come as yuv
        total = s.frames or (int(float(s.duration * s.time_base) * self.rate) if s.duration else 0)
        if duration is not None:
            total = int(round(duration * self.rate))
        elif start:
            total = max(0, total - int(start * self.rate))
        self.total = total or None
        self.audio_streams = list(c.streams.audio)

    def frames(self, yuv: bool = False) -> Iterator[Frame]:
        """yuv: hand out 4:2:0 frames as decoded (no RGB conversion on the CPU) when the stream allows it:
        8-bit 4:2:0, even sides, a matrix colour.py knows. Decided on the first frame (`yuv_colour`)."""
        import av

        from .colour import supported, yuv420_thumbnail

        s, tb = self.stream, self.time_base
        if self.start:
            self.container.seek(int(self.start / tb) + (s.start_time or 0), stream=s, backward=True)
        end = None if self.duration is None else self.start + self.duration
        first, n, last_pts = None, 0, None
        t0 = float((s.start_time or 0) * tb)
        try:
            for f in self.container.decode(s):
                pts = f.pts if f.pts is not None else int(round(n / self.rate / tb))
                t = float(pts * tb) - t0
                if self.start and t < self.start - 1e-6:
                    continue
                if end is not None and t >= end - 1e-6:
                    break
                if first is None:
                    first = pts
                    self.offset_pts = pts if self.start else 0
                    self.rotation = int(round(getattr(f, "rotation", 0) or 0)) % 360
                    self.colour = _colour_tags(f)
                    first_format = f.format.name
                    matrix = int(f.colorspace or 2)
                    if (yuv and f.format.name in ("yuv420p", "yuvj420p") and not (f.width % 2 or f.height % 2)
                            and supported(matrix)):
                        self.yuv_colour = (matrix, f.format.name == "yuvj420p" or int(f.color_range or 0) == 2)
                out_pts = pts - self.offset_pts
                if last_pts is not None and out_pts <= last_pts:  # broken streams: keep PTS strictly rising
                    out_pts = last_pts + 1
                last_pts = out_pts
                n += 1
                if self.yuv_colour is not None:  # rotated on the device, after the conversion
                    if f.format.name != first_format:  # a stream that changes format midway: rare
                        f = f.reformat(format=first_format)
                    planes = f.to_ndarray()
                    yield Frame(None, out_pts, yuv=planes, thumb=yuv420_thumbnail(planes, *self.yuv_colour))
                    continue
                rgb = f.to_ndarray(format="rgb24")
                if self.rotation:
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=self.rotation // 90))
                yield Frame(rgb, out_pts)
        except av.FFmpegError as e:
            raise CycleBatchError(f"{self.path}: the video is corrupt or truncated after {n} frames "
                                  f"({_short(e)})") from None
        if n == 0:
            raise CycleBatchError(f"{self.path}: no decodable video frames"
                                  + (" in the requested clip" if self.start or self.duration else ""))
        if not (self.start or self.duration):
            self._check_complete(n, float(last_pts * tb) - t0 if last_pts is not None else 0.0)

    def _check_complete(self, n: int, last_t: float) -> None:
        """A cut-off file decodes without an error, just fewer frames: compare with what the header promised."""
        s = self.stream
        if s.frames and n + max(2, s.frames // 50) < s.frames:
            raise CycleBatchError(f"{self.path}: truncated or corrupt: decoded {n} of {s.frames} frames")
        expected = float(s.duration * s.time_base) if s.duration else _tag_seconds(s.metadata.get("DURATION"))
        if expected and last_t + 2 / float(self.rate) < 0.98 * expected:
            raise CycleBatchError(f"{self.path}: truncated or corrupt: the video stops at {last_t:.2f} s "
                                  f"of {expected:.2f} s")

    @property
    def offset_seconds(self) -> float:
        return float(self.offset_pts * self.time_base) if self.start else 0.0

    def close(self) -> None:
        self.container.close()


class FolderSource:
    """A folder of same-size images, in name order, at a fixed frame rate."""

    def __init__(self, path: Path, fps: float = DEFAULT_FOLDER_FPS, start: float = 0.0,
                 duration: Optional[float] = None):
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and TMP_MARK not in p.name)
        if not files:
            raise CycleBatchError(f"{path}: a folder without images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.path = path
        self.rate = Fraction(fps).limit_denominator(1001)
        self.time_base = 1 / self.rate
        first = int(round(start * fps))
        last = len(files) if duration is None else min(len(files), first + int(round(duration * fps)))
        self.files = files[first:last]
        self.total = len(self.files)
        self.audio_streams: list = []
        self.offset_seconds = 0.0
        if not self.files:
            raise CycleBatchError(f"{path}: no frames in the requested clip")

    def frames(self) -> Iterator[Frame]:
        size = None
        for i, p in enumerate(self.files):
            rgb = read_image(p).rgb
            if rgb.dtype == np.uint16:
                rgb = (rgb >> 8).astype(np.uint8)
            if size is None:
                size = rgb.shape
            elif rgb.shape != size:
                raise CycleBatchError(f"{p}: {rgb.shape[1]}x{rgb.shape[0]}, but the first frame is "
                                      f"{size[1]}x{size[0]}; a frame folder needs one size")
            yield Frame(rgb, i)

    def close(self) -> None:
        pass


def open_source(path: Path, start: float = 0.0, duration: Optional[float] = None,
                fps: Optional[float] = None):
    path = Path(path)
    if not path.exists():
        raise CycleBatchError(f"{path}: no such file")
    if start < 0 or (duration is not None and duration <= 0):
        raise CycleBatchError(f"{path}: --start must be >= 0 and --duration > 0")
    if path.is_dir():
        return FolderSource(path, fps or DEFAULT_FOLDER_FPS, start, duration)
    if fps is not None:
        raise CycleBatchError(f"{path}: --fps is for a folder of frames; a video keeps its own timing")
    if not os.access(path, os.R_OK):
        raise CycleBatchError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise CycleBatchError(f"{path}: empty file (0 bytes)")
    return VideoSource(path, start, duration)
