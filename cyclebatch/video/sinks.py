"""Video output: encoders and their options, the container sink (video + audio copied or re-encoded,
colour tags kept) and the PNG frame-folder sink, each written under a temporary name."""

from __future__ import annotations

import contextlib
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..errors import CycleBatchError, first_line
from ..io.files import temp_name
from .sources import Frame

FRAME_SUFFIX = ".png"


def _reason(e: BaseException) -> str:
    """An encoder's refusal without the call and its options that PyAV's message repeats."""
    return e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)



# ---------------------------------------------------------------- sinks

def is_frame_folder(path: Path) -> bool:
    """An output without a suffix (or an existing folder) receives numbered PNG frames."""
    return path.is_dir() or path.suffix == ""



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


# The video encoder when none is named: the first this FFmpeg has that the container holds.
DEFAULT_VIDEO_ENCODERS = ("libx264", "libvpx-vp9", "libsvtav1", "libaom-av1", "gif", "mpeg4")
# Audio encoders to re-encode to, in order of preference, where a container cannot take the input's codec.
# Each is still tried on the container (`_audio_encoder`): this is the order, not a claim of support.
AUDIO_ENCODERS = {"webm": ("libopus", "libvorbis"), "ogg": ("libopus", "libvorbis", "flac"),
                  "avi": ("libmp3lame", "pcm_s16le", "aac")}
DEFAULT_AUDIO_ENCODERS = ("aac", "libopus", "libmp3lame", "pcm_s16le")


def default_video_encoder(container_format: str) -> str:
    import av

    for c in DEFAULT_VIDEO_ENCODERS:
        if c in av.codecs_available and container_takes_video(container_format, c):
            return c
    return "libx264"  # refused below with the container's name


def container_takes_video(container_format: str, encoder: str) -> bool:
    """PyAV's list of the container's codecs, else the muxer itself: the list holds only MPEG-TS's default
    codecs, not H.264, while a trial header of GIF wants more than a codec name."""
    import io

    import av

    name = av.Codec(encoder, "w").canonical_name
    with av.open(io.BytesIO(), "w", format=container_format) as o:
        if name in o.supported_codecs or encoder in o.supported_codecs:
            return True
    return _muxer_takes(container_format, lambda o: o.add_mux_stream(name, width=64, height=64))


def _muxer_takes(fmt: str, add) -> bool:
    """Whether FFmpeg's `fmt` muxer writes a header for the stream `add(container)` adds. Asked of the muxer
    itself, on a scratch container in memory: its codec list alone says yes to Opus in MOV, which fails."""
    import io

    import av

    try:
        with av.open(io.BytesIO(), "w", format=fmt) as o:
            add(o)
            o.start_encoding()
        return True
    except (av.FFmpegError, ValueError, OSError, TypeError):
        return False


def _audio_rate(codec, rate: int) -> int:
    rates = list(codec.audio_rates or [])
    if not rates or rate in rates:
        return rate
    return 48000 if 48000 in rates else max(rates)


def _audio_encoder(fmt: str, a) -> Optional[tuple[str, int, str]]:
    """(encoder, sample rate, layout) that the `fmt` container takes for the input audio stream `a`."""
    import av

    rate = a.rate or 48000
    layouts = [a.layout.name] if a.layout and a.layout.name else []
    for name in AUDIO_ENCODERS.get(fmt, DEFAULT_AUDIO_ENCODERS):
        try:
            codec = av.Codec(name, "w")
        except Exception:
            continue  # not in this FFmpeg build
        r = _audio_rate(codec, rate)
        for layout in layouts + ["stereo"]:
            if _muxer_takes(fmt, lambda o: o.add_stream(name, rate=r, layout=layout)):
                return name, r, layout
    return None


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

    def __init__(self, path: Path, src, codec: Optional[str], crf: int, preset: str, label: Optional[Path] = None,
                 notify: Optional[Callable[[str], None]] = None):
        import av

        self.path, self.src = path, src
        self.label = label or path
        self.notify = notify
        self.gif = self.label.suffix.lower() == ".gif"
        # GIF loops: as the input GIF did, else forever (what a GIF is made for); -1: played once.
        options = {"loop": str(getattr(src, "loop", 0))} if self.gif else {}
        try:
            self.out = av.open(str(path), "w", format="gif" if self.gif else None, options=options)
        except PermissionError as e:
            raise CycleBatchError(f"{self.label}: cannot write here ({e.strerror or 'permission denied'})") from None
        except (ValueError, av.FFmpegError) as e:
            raise CycleBatchError(f"{self.label}: cannot write this kind of file ({first_line(e)})") from None
        if codec is None:
            codec = default_video_encoder(self.out.format.name)
        try:
            av.Codec(codec, "w")
        except Exception:
            self.out.close()
            raise CycleBatchError(f"{self.label}: this FFmpeg has no '{codec}' video encoder "
                                  f"(available: {', '.join(available_encoders())})") from None
        if not container_takes_video(self.out.format.name, codec):
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
        self._last_cs = None  # GIF: the last frame's time in 1/100 s

    def _open_video(self, h: int, w: int) -> None:
        import av

        s = self.out.add_stream(self.codec, rate=self.src.rate)
        if self.gif:  # GIF: any size, 256 colours a frame, delays in 1/100 s
            s.width, s.height, s.pix_fmt = w, h, "pal8"
            s.time_base = s.codec_context.time_base = Fraction(1, 100)
            self.stream = s
            s.codec_context.open()
            self._open_audio()
            return
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
        fmt = self.out.format.name
        for a in ins:
            # Copied when this container's muxer takes the stream as it is, else re-encoded to a codec it takes.
            if _muxer_takes(fmt, lambda o: o.add_stream_from_template(a)):
                self.audio.append((a, self.out.add_stream_from_template(a), None))
                continue
            name = a.codec_context.name if a.codec_context else "an undecodable codec"
            plan = _audio_encoder(fmt, a) if a.codec_context is not None else None
            if plan is None:
                if self.notify:
                    self.notify(f"{self.label}: audio stream {a.index} ({name}) left out: the {fmt} container "
                                f"cannot hold it nor any audio codec this FFmpeg can encode to")
                continue
            enc, rate, layout = plan
            self.audio.append((a, self.out.add_stream(enc, rate=rate, layout=layout), a))
        ins = [a for a, _, _ in self.audio]
        if not ins:
            self.audio_in.close()
            self.audio_in = None
            return
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
            if self.gif:
                self._write_gif(f)
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

    def _write_gif(self, f: Frame) -> None:
        """One frame as 256 colours of its own (PIL's median cut), timed in the 1/100 s GIF counts in.
        Frames less than 2/100 s after the previous one are left out: GIF cannot time them (browsers show
        delays under 2/100 s as 1/10 s)."""
        import av
        from PIL import Image

        cs = int(round(float(f.pts * self.src.time_base) * 100))
        if self._last_cs is not None and cs < self._last_cs + 2:
            return
        self._last_cs = cs
        im = Image.fromarray(f.rgb).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        pal = np.zeros((256, 4), np.uint8)
        colours = np.asarray(im.getpalette()[:768], np.uint8).reshape(-1, 3)
        pal[:len(colours), 1:], pal[:, 0] = colours, 255  # PyAV takes palette rows as A, R, G, B
        vf = av.VideoFrame.from_ndarray((np.ascontiguousarray(np.asarray(im)), pal), format="pal8")
        vf.pts, vf.time_base = cs, Fraction(1, 100)
        self.out.mux(self.stream.encode(vf))
        self._mux_audio(cs / 100 + 1.0)

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

    def __init__(self, path: Path, label: Optional[Path] = None):
        self.path = path
        self.label = label or path
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
def atomic_folder(path: Path, replace: bool = False) -> Iterator[Path]:
    """A temporary sibling folder, renamed to `path` only when complete. `replace`: a folder of earlier
    frames there (video.check_output vetted it) is moved aside at the end and removed once the new one is
    in place, so that until then the old frames stay whole."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not replace)):
        raise CycleBatchError(f"{path}: exists; pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(path)
        tmp.mkdir()
    except OSError as e:
        raise CycleBatchError(f"{path}: cannot write here ({e.strerror or first_line(e)})") from None
    try:
        yield tmp
        old = None
        if path.exists():
            if any(path.iterdir()):
                old = temp_name(path)  # a temporary's name: swept as dead if this process dies right here
                os.rename(path, old)
            else:
                path.rmdir()
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
