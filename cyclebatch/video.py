"""Translating videos: decode, run the generator in batches, encode, with the three stages overlapping.

A reader thread demuxes and decodes (FFmpeg's own threads inside), the calling thread runs the model,
a writer thread encodes and muxes. Decisions:

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
- Statistics: shared across the frames of a shot by default (stabilize.py), tiled frames included;
  `stabilize=False` gives every frame its own, as a still image gets.
- GPU: on CUDA frames travel as yuv420p and are converted next to the model (colour.py, `_DevicePath`);
  on a CPU FFmpeg converts. A compiled model sees one batch shape (the last batch is padded).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from .errors import CycleBatchError
from .fileio import TMP_MARK, atomic_path, location_problem, sweep_dead_temps_of, temp_name
from .images import IMAGE_SUFFIXES, read_image

DEFAULT_FOLDER_FPS = 25
FRAME_SUFFIX = ".png"


@dataclass
class VideoResult:
    frames: int
    seconds: float
    output: Path
    scene_cuts: int = 0


@dataclass
class Frame:
    """One frame: RGB pixels, or (GPU path) FFmpeg's yuv420p array as decoded, still in stored orientation."""

    rgb: Optional[np.ndarray]
    pts: int
    yuv: Optional[np.ndarray] = None
    thumb: Optional[np.ndarray] = None  # a few thousand RGB pixels of a yuv frame, for cut detection

    @property
    def size(self) -> tuple[int, int]:
        """Height and width of the stored pixels (a yuv frame's picture is 2/3 of its rows)."""
        if self.rgb is not None:
            return self.rgb.shape[0], self.rgb.shape[1]
        return self.yuv.shape[0] * 2 // 3, self.yuv.shape[1]


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def _reason(e: BaseException) -> str:
    """An encoder's refusal without the call and its options that PyAV's message repeats."""
    return e.strerror if isinstance(e, OSError) and e.strerror else _short(e)


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


# ---------------------------------------------------------------- sinks

def is_frame_folder(path: Path) -> bool:
    """An output without a suffix (or an existing folder) receives numbered PNG frames."""
    return path.is_dir() or path.suffix == ""


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


# x264/x265 presets -> NVENC's p1 (fastest) .. p7 (best); p1..p7 are taken as they are.
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p2", "fast": "p3",
                 "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7", "placebo": "p7"}
SOFTWARE_ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1")


def available_encoders() -> list[str]:
    """The video encoders `--codec` is documented for that this FFmpeg build has."""
    import av

    known = SOFTWARE_ENCODERS + ("h264_nvenc", "hevc_nvenc", "av1_nvenc")
    return [c for c in known if c in av.codecs_available]


def _alternatives(codec: str) -> str:
    others = [c for c in available_encoders() if c != codec and not c.endswith("_nvenc")]
    return f"; use --codec {' or '.join(others[:3])}" if others else ""


def encoder_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    """--crf and --preset in the encoder's own terms. NVENC: constant quality (`cq`, its CRF-like scale;
    0 there means "automatic", so --crf 0 asks for lossless) with the bitrate cap lifted, presets mapped."""
    if codec.endswith("_nvenc"):
        p = preset if preset in {f"p{i}" for i in range(1, 8)} else NVENC_PRESETS.get(preset)
        if p is None:
            raise CycleBatchError(f"--preset {preset}: not a preset for {codec} (use p1..p7 or an x264 name: "
                                  f"{', '.join(NVENC_PRESETS)})")
        if crf == 0:
            return {"preset": p, "tune": "lossless"}
        return {"preset": p, "rc": "vbr", "cq": str(min(crf, 51)), "b": "0"}
    opts = {}
    if codec in SOFTWARE_ENCODERS:
        opts["crf"] = str(crf)
    if codec in ("libx264", "libx265"):
        opts["preset"] = preset
    return opts


def _probe_encoder(codec: str, options: dict[str, str]) -> None:
    """Open the encoder once on a small frame size: a hardware encoder without its device fails here."""
    import av

    cc = av.CodecContext.create(codec, "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base = 256, 256, "yuv420p", Fraction(1, 25)
    cc.options = dict(options)
    try:
        cc.open()
    except (av.FFmpegError, OSError, ValueError) as e:
        raise CycleBatchError(f"cannot open the {codec} encoder ({_reason(e)}): it needs an NVIDIA GPU and "
                              f"driver{_alternatives(codec)}") from None
    finally:
        del cc


class VideoSink:
    """Encodes frames into a container; copies (or re-encodes) the source's audio, interleaved by time."""

    def __init__(self, path: Path, src, codec: str, crf: int, preset: str, label: Optional[Path] = None):
        import av

        self.path, self.src = path, src
        self.label = label or path
        try:
            self.out = av.open(str(path), "w")
        except PermissionError as e:
            raise CycleBatchError(f"{self.label}: cannot write here ({e.strerror or 'permission denied'})") from None
        except (ValueError, av.FFmpegError) as e:
            raise CycleBatchError(f"{self.label}: cannot write this kind of file ({_short(e)})") from None
        try:
            av.Codec(codec, "w")
        except Exception:
            self.out.close()
            raise CycleBatchError(f"{self.label}: this FFmpeg has no '{codec}' video encoder "
                                  f"(available: {', '.join(available_encoders())})") from None
        if codec not in self.out.supported_codecs and av.Codec(codec, "w").name not in self.out.supported_codecs:
            self.out.close()
            raise CycleBatchError(f"{self.label}: the {self.out.format.name} container cannot hold {codec} video")
        try:
            self.options = encoder_options(codec, crf, preset)
            if codec.endswith("_nvenc"):  # needs a GPU and its driver: find out now, not after the first batch
                _probe_encoder(codec, self.options)
        except CycleBatchError as e:
            self.out.close()
            raise CycleBatchError(f"{self.label}: {e}") from None
        self.codec, self.crf, self.preset = codec, crf, preset
        self.stream = None
        self.audio_in = None
        self.audio: list = []  # (input stream, output stream, decoder-or-None)
        self._audio_packets: Optional[Iterator] = None
        self._pending = None

    def _open_video(self, h: int, w: int) -> None:
        import av

        s = self.out.add_stream(self.codec, rate=self.src.rate)
        s.width, s.height = w + w % 2, h + h % 2
        s.pix_fmt = "yuv420p"
        s.time_base = self.src.time_base
        s.codec_context.time_base = self.src.time_base
        s.thread_type = "AUTO"
        # 0: the encoder picks its thread count (x264: 1.5 per core, plus lookahead). FFmpeg's own default
        # is 1, a single-threaded x264; PyAV happens to set 0 today, so it is said here explicitly.
        s.codec_context.thread_count = 0
        s.options = dict(self.options)
        self.colour = getattr(self.src, "colour", None)
        for name, value in (self.colour or {}).items():  # same matrix, range, primaries and transfer as the input
            setattr(s.codec_context, name, value)
        try:  # opened here, so that a refusal (size, options, no GPU) is one clear error
            s.codec_context.open()
        except (av.FFmpegError, OSError, ValueError) as e:
            raise CycleBatchError(f"{self.label}: cannot open the {self.codec} encoder for {s.width}x{s.height} "
                                  f"video ({_reason(e)}){_alternatives(self.codec)}") from None
        self.stream = s
        self._open_audio()

    def _open_audio(self) -> None:
        import av

        if not self.src.audio_streams:
            return
        self.audio_in = av.open(str(self.src.path), metadata_errors="ignore")
        ins = [self.audio_in.streams.audio[i] for i in range(len(self.src.audio_streams))]
        for a in ins:
            name = a.codec_context.name if a.codec_context else None
            if name and name in self.out.supported_codecs and self.out.format.name not in ("webm",):
                self.audio.append((a, self.out.add_stream_from_template(a), None))
            else:
                if a.codec_context is None:
                    continue  # an undecodable audio stream cannot be re-encoded either: leave it out
                o = self.out.add_stream("aac", rate=a.rate or 48000, layout=a.layout.name if a.layout else "stereo")
                self.audio.append((a, o, a))
        if self.src.offset_seconds:
            self.audio_in.seek(int(self.src.offset_seconds * 1_000_000), backward=True)
        self._audio_packets = self.audio_in.demux(ins)

    def write(self, frames: list[Frame]) -> None:
        import av

        h, w = frames[0].size
        if self.stream is None:
            self._open_video(h, w)
        for f in frames:
            if f.yuv is not None:  # converted on the device already, in the output's matrix and range
                vf = av.VideoFrame.from_ndarray(f.yuv, format="yuv420p")
                vf.pts, vf.time_base = f.pts, self.src.time_base
                self.out.mux(self.stream.encode(vf))
                self._mux_audio(float(f.pts * self.src.time_base) + 1.0)
                continue
            rgb = f.rgb
            if h % 2 or w % 2:
                rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if self.colour:  # decoding used the input's matrix and range (PyAV reads the tags): encode with them
                vf = vf.reformat(format="yuv420p", dst_colorspace=self.colour["colorspace"],
                                 dst_color_range=self.colour["color_range"])
            vf.pts, vf.time_base = f.pts, self.src.time_base
            self.out.mux(self.stream.encode(vf))
            self._mux_audio(float(f.pts * self.src.time_base) + 1.0)

    def _mux_audio(self, until: Optional[float]) -> None:
        """Copy audio up to `until` seconds of output time (None: to the end of the clip)."""
        if self._audio_packets is None:
            return
        start = self.src.offset_seconds
        end = None if getattr(self.src, "duration", None) is None else self.src.duration
        streams = {a.index: (a, o, d) for a, o, d in self.audio}
        while True:
            p = self._pending or next(self._audio_packets, None)
            self._pending = None
            if p is None:
                self._audio_packets = None
                return
            if p.size == 0 or p.pts is None or p.stream.index not in streams:
                continue
            t = float(p.pts * p.time_base) - start
            if until is not None and t > until:
                self._pending = p
                return
            # Before a clip's start: skip. Without a clip, negative times (AAC priming) are kept as they are.
            if (start and t < -1e-3) or (end is not None and t >= end):
                continue
            a, o, dec = streams[p.stream.index]
            shift = int(round(start / p.time_base))
            if dec is None:
                p.pts -= shift
                if p.dts is not None:
                    p.dts -= shift
                p.stream = o
                self.out.mux(p)
            else:
                for af in dec.decode(p):
                    af.pts = None  # the encoder counts samples from 0 on
                    self.out.mux(o.encode(af))

    def close(self) -> None:
        if self.stream is not None:
            self.out.mux(self.stream.encode())
            self._mux_audio(None)
            for _, o, dec in self.audio:
                if dec is not None:
                    self.out.mux(o.encode())
        self.out.close()
        if self.audio_in is not None:
            self.audio_in.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.out.close()
        with contextlib.suppress(Exception):
            if self.audio_in is not None:
                self.audio_in.close()


class FolderSink:
    """Numbered PNG frames (000001.png, ...) in a folder."""

    def __init__(self, path: Path):
        self.path = path
        self.n = 0

    def write(self, frames: list[Frame]) -> None:
        from PIL import Image

        for f in frames:
            self.n += 1
            Image.fromarray(f.rgb).save(self.path / f"{self.n:06d}{FRAME_SUFFIX}", compress_level=1)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary sibling folder, renamed to `path` only when complete."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CycleBatchError(f"{path}: exists and is not an empty folder; frames go to a new or empty folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(path)
        tmp.mkdir()
    except OSError as e:
        raise CycleBatchError(f"{path}: cannot write here ({e.strerror or _short(e)})") from None
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- pipeline

class _Stop(Exception):
    pass


def _put(q: "queue.Queue", item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            pass
    raise _Stop()


def _get(q: "queue.Queue", stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            pass
    raise _Stop()


_END = object()


def translate_video(src: str | Path, dst: str | Path, translator, *, codec: str = "libx264", crf: int = 18,
                    preset: str = "medium", start: float = 0.0, duration: Optional[float] = None,
                    fps: Optional[float] = None, stabilize: bool = True,
                    progress: Optional[Callable[[int, Optional[int]], None]] = None,
                    colour_on_device: Optional[bool] = None) -> VideoResult:
    """Translate every frame of `src` (a video file or a folder of frames) into `dst`.

    `translator` is an `engine.Translator` (anything with `translate_batch` and `auto_batch_size`); built
    with compile=True, every pass keeps one shape (the last batch is padded) so it compiles once.
    `dst` is a video file (its suffix picks the container) or a folder for numbered PNG frames.
    `stabilize` shares InstanceNorm statistics across the frames of a shot (see `stabilize.py`).
    `progress(done, total_or_None)` is called after every batch.
    `colour_on_device`: YUV <-> RGB with torch on the translator's device (colour.py) instead of FFmpeg on
    the CPU; default: on CUDA only (on a CPU swscale is many times faster).
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CycleBatchError(f"{dst}: the output would overwrite the input")
    source = open_source(src, start, duration, fps)
    sweep_dead_temps_of(dst)  # a killed earlier attempt at this same output
    if colour_on_device is None:
        colour_on_device = getattr(getattr(translator, "device", None), "type", None) == "cuda"
    colour_on_device = colour_on_device and hasattr(translator, "model_input")  # not for a stand-in
    t0 = time.perf_counter()
    try:
        if is_frame_folder(dst):
            with atomic_folder(dst) as tmp:
                n, cuts = _pipeline(source, FolderSink(tmp), translator, stabilize, progress, colour_on_device)
        else:
            try:
                ctx = atomic_path(dst)
                tmp = ctx.__enter__()
            except OSError as e:
                raise CycleBatchError(f"{dst}: cannot write here ({e.strerror or _short(e)})") from None
            try:
                sink = VideoSink(tmp, source, codec, crf, preset, label=dst)
                n, cuts = _pipeline(source, sink, translator, stabilize, progress, colour_on_device)
            except BaseException as e:
                ctx.__exit__(type(e), e, e.__traceback__)
                raise
            ctx.__exit__(None, None, None)
    except OSError as e:  # a full disk or a read-only folder: one line; the partial output is already gone
        problem = location_problem(e, dst)
        if problem is None:
            raise
        raise CycleBatchError(f"{problem}; {dst} was not written") from None
    finally:
        source.close()
    return VideoResult(n, time.perf_counter() - t0, dst, cuts)


class _DevicePath:
    """yuv420p frames go to the device as decoded; RGB exists only there, around the model; yuv420p (RGB
    for PNG frames) comes back. On a GPU this takes FFmpeg's conversions, the slowest CPU work after the
    encoder, off the CPU threads.

    The engine takes RGB arrays, so this launches its own passes (model_input, _run, quantize) through the
    engine's pass loop (`run_passes`: batch size, out-of-memory halving, the listener). Tiled frames and
    non-finite output go through `translate_batch` with RGB made here, so the tiler and the fp32 re-run are
    the engine's own.
    """

    def __init__(self, translator, source, to_yuv: bool):
        self.tr = translator
        self.src = source.yuv_colour
        colour = source.colour
        # The output's matrix and range are the input's when tagged; untagged output is BT.601, limited.
        self.dst = (colour["colorspace"], colour["color_range"] == 2) if colour else (2, False)
        self.rotation = source.rotation
        self.to_yuv = to_yuv

    def size(self, frame: Frame) -> tuple[int, int]:
        h, w = frame.size
        return (w, h) if self.rotation in (90, 270) else (h, w)

    def __call__(self, batch: list[Frame], listener) -> list[Frame]:
        h, w = self.size(batch[0])

        def launch(chunk: list[Frame]) -> list[Frame]:
            done = self._launch(chunk)
            if done is None:  # non-finite output: the engine's own fp32 re-run (or failure) on RGB frames
                if listener is not None:
                    listener.abort()
                done = self._via_engine(chunk, listener)
            return done

        parts = self.tr.run_passes(batch, h, w, launch, lambda rest: self._via_engine(rest, listener), listener,
                                   announce=lambda chunk: [f.thumb for f in chunk])
        return [f for part in parts for f in part]

    def _rgb(self, chunk: list[Frame]):
        import torch

        from .colour import yuv420_to_rgb

        raw = torch.from_numpy(np.stack([f.yuv for f in chunk]))
        if self.tr.device.type == "cuda":
            raw = raw.pin_memory()
        rgb = yuv420_to_rgb(raw.to(self.tr.device, non_blocking=True), *self.src)
        return torch.rot90(rgb, self.rotation // 90, dims=(2, 3)) if self.rotation else rgb

    def _launch(self, chunk: list[Frame]):
        import torch

        from .colour import rgb_to_yuv420

        tr = self.tr
        with torch.inference_mode():
            x = self._rgb(chunk).mul_(2.0 / 255.0).sub_(1.0)
            y = tr._run(tr.model_input(x), tr._forward, tr.autocast())
            q, finite = tr.quantize(y)
            px = rgb_to_yuv420(q.permute(0, 3, 1, 2).float(), *self.dst) if self.to_yuv else q
            px = px.cpu().numpy()
        tr.stats.batch_sizes[len(chunk)] += 1
        if not bool(finite.all()):
            return None
        if self.to_yuv:
            return [Frame(None, f.pts, yuv=p) for f, p in zip(chunk, px)]
        return [Frame(p, f.pts) for f, p in zip(chunk, px)]

    def _via_engine(self, frames: list[Frame], listener) -> list[Frame]:
        import torch

        with torch.inference_mode():  # one frame at a time: this runs after the device ran out of memory
            rgbs = [self._rgb([f])[0].to(torch.uint8).permute(1, 2, 0).cpu().numpy() for f in frames]
        outs = self.tr.translate_batch(rgbs, listener=listener)
        return [Frame(o, f.pts) for o, f in zip(outs, frames)]


def _is_compiled(translator) -> bool:
    model = getattr(translator, "model", None)
    return model is not None and getattr(translator, "_forward", model) is not model


def _pipeline(source, sink, translator, stabilize: bool, progress, colour_on_device: bool = False) -> tuple[int, int]:
    from .stabilize import StableStats

    stop = threading.Event()
    frames_q: "queue.Queue" = queue.Queue(maxsize=16)
    out_q: "queue.Queue" = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    yuv = colour_on_device and isinstance(source, VideoSource)

    def read() -> None:
        try:
            for f in (source.frames(yuv=True) if yuv else source.frames()):
                _put(frames_q, f, stop)
            _put(frames_q, _END, stop)
        except _Stop:
            pass
        except BaseException as e:
            errors.append(e)
            stop.set()

    def write() -> None:
        try:
            while True:
                batch = _get(out_q, stop)
                if batch is _END:
                    sink.close()
                    return
                sink.write(batch)
        except _Stop:
            pass
        except BaseException as e:
            errors.append(e)
            stop.set()

    sharing = stabilize and hasattr(getattr(translator, "model", None), "norms")  # not for a stand-in model
    stable = StableStats(translator) if sharing else None
    # A compiled model is specialised to one batch shape: the last, shorter batch is padded with copies of
    # its last frame (dropped again) rather than compiled anew. The shared statistics run forwards in
    # time, so the copies after the real frames change none of them.
    pad = _is_compiled(translator)
    reader = threading.Thread(target=read, name="cyclebatch-decode", daemon=True)
    writer = threading.Thread(target=write, name="cyclebatch-encode", daemon=True)
    reader.start()
    writer.start()
    done = 0
    try:
        with (stable if stable is not None else contextlib.nullcontext()):
            batch_size, ended, device = None, False, None
            while not ended:
                first = _get(frames_q, stop)
                if first is _END:
                    break
                if batch_size is None:
                    if first.yuv is not None:
                        device = _DevicePath(translator, source, isinstance(sink, VideoSink))
                    size = device.size(first) if device is not None else first.size
                    batch_size = max(1, translator.auto_batch_size(*size))
                batch = [first]
                while len(batch) < batch_size:
                    item = _get(frames_q, stop)
                    if item is _END:
                        ended = True
                        break
                    batch.append(item)
                run = batch + [batch[-1]] * (batch_size - len(batch)) if pad else batch
                if device is not None:
                    outs = device(run, stable)[:len(batch)]
                else:
                    images = [f.rgb for f in run]
                    results = (translator.translate_batch(images, listener=stable) if stable is not None
                               else translator.translate_batch(images))
                    outs = [Frame(o, f.pts) for o, f in zip(results, batch)]
                _put(out_q, outs, stop)
                done += len(batch)
                if progress:
                    progress(done, source.total)
        _put(out_q, _END, stop)
        writer.join()
        if errors:
            raise _Stop()
    except _Stop:
        reader.join()
        writer.join()
        sink.abort()
        raise errors[0] if errors else CycleBatchError("stopped")
    except BaseException:
        stop.set()
        reader.join()
        writer.join()
        sink.abort()
        raise
    return done, (stable.n_cuts if stable is not None else 0)
