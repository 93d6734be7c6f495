"""Video input: the first video stream of a file (decoded, upright, clipped) or a folder of frames, as
`Frame`s in display order; the colour tags the output takes over from the input."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import CycleBatchError, first_line
from ..io.files import TMP_MARK
from ..io.images import IMAGE_SUFFIXES, read_image

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

# Demuxers of bare codec data (no container) and of single images. FFmpeg guesses them from a few bytes, so
# random data or a text file can "open" as raw H.263 or MPEG video; a file named like a container that
# opens as one of these is not a video.
RAW_FORMATS = {"h261", "h263", "h264", "hevc", "vvc", "m4v", "mpegvideo", "cavsvideo", "dirac", "dnxhd", "vc1",
               "avs2", "avs3", "mjpeg", "mjpeg_2000", "obu", "evc", "rawvideo", "data", "bin", "tty"}
CONTAINER_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".wmv", ".flv", ".3gp", ".ogv"}
PROBE_PACKETS = 300  # a real stream gives its first frame within a few dozen packets


def _not_a_video(path: Path, container) -> Optional[str]:
    """Why an opened file is not a video, judged from its container format alone (None: it may be one)."""
    fmt = container.format.name.split(",")[0]
    if fmt.endswith("_pipe") or fmt == "image2":
        return f"{path}: not a video (a single {fmt.replace('_pipe', '').upper()} image; `cyclebatch run` translates images)"
    if fmt in RAW_FORMATS and path.suffix.lower() in CONTAINER_SUFFIXES:
        return f"{path}: not a video (no {path.suffix.lower()} container in it; FFmpeg can only guess it is raw {fmt} data)"
    return None


def _first_frame_problem(path: Path) -> Optional[str]:
    """Decode the first video frame on a container of its own (the real pass starts from scratch): a file
    whose first frame does not decode is refused at once, before any model is loaded."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            s = c.streams.video[0]
            for i, packet in enumerate(c.demux(s)):
                if packet.size and s.codec_context.decode(packet):
                    return None
                if i >= PROBE_PACKETS:
                    return None  # undecided: the full pass will tell
            s.codec_context.decode(None)
    except av.FFmpegError as e:
        return f"{path}: not a video, or damaged from its start: no frame decodes ({first_line(e)})"
    return None

def _tag_seconds(tag: Optional[str]) -> float:
    """Matroska's per-track DURATION tag, HH:MM:SS.fraction, in seconds (0 when absent or unreadable)."""
    try:
        h, m, sec = (tag or "").split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


def _gif_loop(path: Path) -> int:
    """A GIF's loop count as FFmpeg's GIF muxer takes it: 0 forever, N times more, -1 played once (no
    NETSCAPE extension). FFmpeg's demuxer does not report it; PIL reads it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            loop = im.info.get("loop")
    except Exception:
        return 0
    return -1 if loop is None else int(loop)


class VideoSource:
    """The first video stream of a file: decoded, rotated upright, clipped to [start, start + duration)."""

    def __init__(self, path: Path, start: float = 0.0, duration: Optional[float] = None):
        import av

        self.path = path
        try:
            self.container = av.open(str(path), metadata_errors="ignore")
        except av.FFmpegError as e:
            # strerror: FFmpeg's reason without the file name it repeats
            raise CycleBatchError(f"{path}: not a video, or one too damaged to open "
                                  f"({getattr(e, 'strerror', None) or first_line(e)})") from None
        c = self.container
        problem = _not_a_video(path, c)
        if problem:
            c.close()
            raise CycleBatchError(problem)
        if not c.streams.video:
            kind = "an audio-only file" if c.streams.audio else "a file without streams"
            c.close()
            raise CycleBatchError(f"{path}: no video stream ({kind})")
        self.stream = s = c.streams.video[0]
        if s.codec_context is None:
            c.close()
            raise CycleBatchError(f"{path}: cannot decode its video codec (this FFmpeg has no decoder for it)")
        problem = _first_frame_problem(path)
        if problem:
            c.close()
            raise CycleBatchError(problem)
        s.thread_type = "AUTO"
        self.time_base: Fraction = s.time_base or Fraction(1, 90000)
        self.rate: Fraction = s.average_rate or s.guessed_rate or Fraction(DEFAULT_FOLDER_FPS)
        self.start, self.duration = start, duration
        self.rotation = 0
        self.offset_pts = 0  # subtracted from every PTS (clip start)
        self.colour: Optional[dict] = None  # the first frame's colour tags, when it carries any
        self.yuv_colour: Optional[tuple[int, bool]] = None  # (matrix, full range) when frames come as yuv
        self.file_end = self._file_end()
        if start and self.file_end and start > self.file_end - 2 / float(self.rate):
            c.close()  # said now, before a model is loaded for nothing
            raise CycleBatchError(f"{path}: --start {start:g} is at or past the video's last frame "
                                  f"({self.file_end:.2f} s)")
        total = s.frames or (int(self.file_end * self.rate) if self.file_end else 0)
        if duration is not None:
            clip = int(round(duration * self.rate))
            total = min(clip, max(0, total - int(start * self.rate))) if total else clip
        elif start:
            total = max(0, total - int(start * self.rate))
        self.total = total or None
        self.audio_streams = list(c.streams.audio)
        self.loop = _gif_loop(path) if c.format.name == "gif" else 0


    def frames(self, yuv: bool = False) -> Iterator[Frame]:
        """yuv: hand out 4:2:0 frames as decoded (no RGB conversion on the CPU) when the stream allows it:
        8-bit 4:2:0, even sides, a matrix colour.py knows. Decided on the first frame (`yuv_colour`)."""
        import av

        from .colour import supported, yuv420_thumbnail

        s, tb = self.stream, self.time_base
        if self.start:
            self.container.seek(int(self.start / tb) + (s.start_time or 0), stream=s, backward=True)
        end = None if self.duration is None else self.start + self.duration
        first, n, last_pts, last_t = None, 0, None, 0.0
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
                # Where the frame ends: its own duration when the stream says (a GIF's last frame can be
                # long), else one average frame.
                last_pts = out_pts
                last_t = t + t0 + (float(f.duration * tb) if f.duration else 1 / float(self.rate))
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
                                  f"({first_line(e)})") from None
        if n == 0:
            if self.start or self.duration:
                if self.file_end and self.start > self.file_end - 2 / float(self.rate):
                    raise CycleBatchError(f"{self.path}: --start {self.start:g} is at or past the video's last frame "
                                          f"({self.file_end:.2f} s)")
                raise CycleBatchError(f"{self.path}: truncated or corrupt: no frame decodes in the clip "
                                      f"{self.start:g}-{self._clip_end():.2f} s")
            raise CycleBatchError(f"{self.path}: no decodable video frames")
        self._check_complete(n, float(last_t) - t0)  # t0 is the stream's start, as the header's duration

    def _file_end(self) -> float:
        """Seconds of video the header promises (stream duration, Matroska's DURATION tag or frame count);
        0 when it says nothing."""
        s = self.stream
        if s.duration:
            return float(s.duration * s.time_base)
        return _tag_seconds(s.metadata.get("DURATION")) or (s.frames / float(self.rate) if s.frames else 0.0)

    def _clip_end(self) -> float:
        """Where the requested range ends within the file (the file's end when it asks past it)."""
        if self.duration is None:
            return self.file_end
        return min(self.start + self.duration, self.file_end) if self.file_end else self.start + self.duration

    def _constant_rate(self) -> bool:
        s = self.stream
        return bool(s.average_rate and s.base_rate and s.average_rate == s.base_rate)

    def _check_complete(self, n: int, last_t: float) -> None:  # last_t: where the last frame ends
        """A cut-off file decodes without an error, just fewer frames: compare with what the header promised,
        for the whole file or for the part of it that a clip (start, duration) asked for."""
        s, frame = self.stream, 1 / float(self.rate)
        clip = bool(self.start or self.duration is not None)
        if not clip and s.frames and n + max(2, s.frames // 50) < s.frames:
            raise CycleBatchError(f"{self.path}: truncated or corrupt: decoded {n} of {s.frames} frames")
        if not self.file_end:
            return  # the header promises no length: nothing to compare with
        end = self._clip_end()
        # At a constant frame rate the span also gives a frame count: a cut inside a group of pictures loses
        # frames before the last one decoded, which the time alone does not show.
        want = int(round((end - self.start) * float(self.rate)))
        if clip and self._constant_rate() and n + max(2, want // 50) < want:
            raise CycleBatchError(f"{self.path}: truncated or corrupt: decoded {n} of ~{want} frames of the clip "
                                  f"{self.start:g}-{end:.2f} s")
        # last_t is where the last frame ends; one frame and 2% of the span allow for rounded durations.
        if last_t + frame < self.start + 0.98 * (end - self.start):
            if not clip:
                raise CycleBatchError(f"{self.path}: truncated or corrupt: the video stops at {last_t:.2f} s "
                                      f"of {end:.2f} s")
            want = max(n, want)
            raise CycleBatchError(f"{self.path}: truncated or corrupt: decoded {n} of ~{want} frames of the clip "
                                  f"{self.start:g}-{end:.2f} s (the video stops at {last_t:.2f} s)")

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
        raise CycleBatchError(f"{path}: not a video (an empty file, 0 bytes)")
    return VideoSource(path, start, duration)
