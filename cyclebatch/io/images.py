"""Decoding and encoding still images: every mode users have, in and out, without losing size or alpha.

Pixels travel as NumPy arrays: colour HxWx3 (uint8, or uint16 for 16-bit sources) plus an optional
HxW alpha of the same dtype. The model only ever sees the colour.
"""

from __future__ import annotations

import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from ..errors import CycleBatchError, first_line
from .files import atomic_path

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit from the header, with a clear message
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 400_000_000  # 20000 x 20000: decoding alone takes 1.2 GB at 8 bits
# The most pixels a byte of each format can carry, with a wide margin over what its compression can reach
# (measured with Pillow on blank 8000x8000 images: PNG 1-bit 8,163 px/byte (deflate's limit is ~1,032:1),
# JPEG 85, GIF 1,336, BMP RLE under 256, TIFF deflate 5,518, WebP lossless 25,580). A header claiming
# more is a damaged or hostile file.
MAX_PIXELS_PER_BYTE = {"PNG": 20_000, "JPEG": 5_000, "MPO": 5_000, "GIF": 20_000, "BMP": 5_000, "WEBP": 1_000_000}
DEFAULT_PIXELS_PER_BYTE = 10_000_000  # TIFF (CCITT fax coding of a blank page goes far) and the rest


@dataclass
class Picture:
    rgb: np.ndarray  # HxWx3, uint8 or uint16
    alpha: Optional[np.ndarray] = None  # HxW, same dtype as rgb
    info: dict = field(default_factory=dict)  # icc_profile / exif carried to the output

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def probe(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as displayed, from the header only; refuses oversize images before decoding."""
    with _open(path) as im:
        w, h = im.size
        fmt = im.format
        if _orientation(im) in (5, 6, 7, 8):
            w, h = h, w
    if w * h > max_pixels:
        raise CycleBatchError(f"{path}: {w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,} "
                              "(raise it with --max-pixels)")
    size = path.stat().st_size
    if w * h > MAX_PIXELS_PER_BYTE.get(fmt, DEFAULT_PIXELS_PER_BYTE) * size:
        # Decoding would allocate the whole claimed image (gigabytes) before finding the data missing.
        raise CycleBatchError(f"{path}: corrupt or truncated image (its header claims {w}x{h}, which {size:,} "
                              f"bytes of {fmt or 'image data'} cannot hold)")
    return w, h


def _open(path: Path) -> Image.Image:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # never open it: reading a FIFO with no writer blocks forever
            raise CycleBatchError(f"{path}: {not_regular(st.st_mode)}")
        if st.st_size == 0:
            raise CycleBatchError(f"{path}: empty file (0 bytes)")
        return Image.open(path)
    except CycleBatchError:
        raise
    except FileNotFoundError:
        raise CycleBatchError(f"{path}: no such file") from None
    except PermissionError:
        raise CycleBatchError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise CycleBatchError(f"{path}: is a folder") from None
    except Image.UnidentifiedImageError:
        raise CycleBatchError(f"{path}: not an image (unrecognised content)") from None
    except OSError as e:
        if e.errno is not None:  # the file system refused, not the content
            raise CycleBatchError(f"{path}: cannot read ({e.strerror})") from None
        raise CycleBatchError(f"{path}: corrupt or truncated image ({first_line(e)})") from None
    except Exception as e:  # a damaged header can raise nearly anything inside a format plugin
        raise CycleBatchError(f"{path}: corrupt or truncated image ({first_line(e)})") from None


def not_regular(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    what = next((name for test, name in kinds if test(mode)), "a special file")
    return f"not a regular file ({what}); skipped without reading it"


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block must not cost the image
        return 1


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode with EXIF orientation applied; gray, palette, CMYK, 16-bit and alpha all handled."""
    probe(path, max_pixels)
    im = _open(path)
    frames = getattr(im, "n_frames", 1) if im.format in ("GIF", "PNG", "WEBP") else 1
    if frames > 1:  # translating its first frame alone would silently drop the rest
        how = (f"`cyclebatch video {path.name} OUT.gif` translates every frame" if im.format == "GIF"
               else "`cyclebatch video` translates every frame of a GIF or video made from it")
        raise CycleBatchError(f"{path}: an animation ({frames} frames); run translates stills: {how}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            info = {k: im.info[k] for k in ("icc_profile",) if im.info.get(k)}
            exif = im.getexif()
            orientation = _orientation(im)
            sixteen = _is_16bit(im, path)
            im = ImageOps.exif_transpose(im)
        if exif:
            exif[0x0112] = 1  # orientation is now baked into the pixels
            try:
                info["exif"] = exif.tobytes()
            except Exception:  # a damaged EXIF block must not cost the image, only itself
                pass
        if sixteen:
            return _read_16bit(path, info, orientation)
        return _from_pil(im, info)
    except CycleBatchError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for damaged data
        raise CycleBatchError(f"{path}: corrupt or truncated image ({first_line(e)})") from None


def _is_16bit(im: Image.Image, path: Path) -> bool:
    if im.mode.startswith("I;16") or im.mode == "I":
        return True
    if im.mode not in ("RGB", "RGBA"):
        return False
    # Pillow reads 16-bit-per-channel RGB(A) PNG and TIFF as 8-bit; OpenCV keeps all 16 bits.
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, 8)
        return (bits[0] if isinstance(bits, tuple) else bits) == 16
    if im.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)
        return len(header) == 25 and header[24] == 16  # IHDR bit depth
    return False


def _read_16bit(path: Path, info: dict, orientation: int) -> Picture:
    import cv2

    arr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise CycleBatchError(f"{path}: corrupt 16-bit image")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.uint16) * 257
    elif arr.dtype != np.uint16:
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    if arr.ndim == 2:
        rgb, alpha = np.repeat(arr[..., None], 3, axis=2), None
    elif arr.shape[2] == 4:
        rgb, alpha = arr[..., 2::-1], arr[..., 3]
    else:
        rgb, alpha = arr[..., 2::-1], None
    rgb = _orient(rgb, orientation)
    return Picture(rgb, None if alpha is None else _orient(alpha, orientation), info)


def _orient(arr: np.ndarray, o: int) -> np.ndarray:
    """Apply an EXIF orientation (OpenCV's IMREAD_UNCHANGED ignores it)."""
    t = (lambda a: np.swapaxes(a, 0, 1)) if o in (5, 6, 7, 8) else (lambda a: a)
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: t, 6: lambda a: t(a)[:, ::-1], 7: lambda a: t(a)[::-1, ::-1], 8: lambda a: t(a)[::-1]}
    return np.ascontiguousarray(ops.get(o, lambda a: a)(arr))


def _from_pil(im: Image.Image, info: dict) -> Picture:
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        return Picture(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), info)
    if im.mode == "CMYK":
        info.pop("icc_profile", None)  # a CMYK profile does not describe the RGB output
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return Picture(np.ascontiguousarray(np.asarray(im.convert("RGB"))), None, info)


# ---------------------------------------------------------------- encoding

_PIL_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
               ".tif": "TIFF", ".tiff": "TIFF"}


def working_size(w: int, h: int, max_size: Optional[int], scale: Optional[float]) -> tuple[int, int]:
    f = 1.0
    if scale:
        f = scale
    if max_size and max(w, h) * f > max_size:
        f = max_size / max(w, h)
    return (w, h) if f == 1.0 else (max(1, round(w * f)), max(1, round(h * f)))


def resize_to(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixels to the working size (w, h): area averaging down, bicubic up (`run` and `video` alike)."""
    import cv2

    down = size[0] < pixels.shape[1]
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if down else cv2.INTER_CUBIC)


def write_image(path: Path, pic: Picture, quality: int = 95) -> None:
    """Encode by the suffix of `path`, atomically. 16-bit goes out as 16-bit where the format can hold it."""
    suffix = path.suffix.lower()
    if suffix not in _PIL_FORMAT:
        raise CycleBatchError(f"{path}: cannot write '{suffix}' images (use one of {', '.join(sorted(_PIL_FORMAT))})")
    rgb, alpha = pic.rgb, pic.alpha
    if rgb.dtype == np.uint16 and suffix in (".png", ".tif", ".tiff"):
        _write_16bit(path, rgb, alpha)
        return
    if rgb.dtype == np.uint16:  # the format has no 16-bit: round to 8
        rgb = (rgb.astype(np.uint32) + 128) // 257
        alpha = None if alpha is None else (alpha.astype(np.uint32) + 128) // 257
        rgb, alpha = rgb.astype(np.uint8), None if alpha is None else alpha.astype(np.uint8)
    if alpha is not None and suffix in (".jpg", ".jpeg", ".bmp"):
        alpha = None  # the format cannot carry it; the caller chose the format
    im = Image.fromarray(np.dstack([rgb, alpha]) if alpha is not None else rgb, "RGBA" if alpha is not None else "RGB")
    fmt = _PIL_FORMAT[suffix]
    kw: dict = {}
    if fmt in ("JPEG", "WEBP"):
        kw["quality"] = quality
    if fmt == "JPEG":
        kw["subsampling"] = 0 if quality >= 90 else 2
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kw.update({k: v for k, v in pic.info.items() if k in ("icc_profile", "exif")})
    with atomic_path(path) as tmp:
        im.save(tmp, fmt, **kw)


def _write_16bit(path: Path, rgb: np.ndarray, alpha: Optional[np.ndarray]) -> None:
    import cv2

    bgr = rgb[..., ::-1] if alpha is None else np.dstack([rgb[..., ::-1], alpha])
    ok, buf = cv2.imencode(path.suffix.lower(), np.ascontiguousarray(bgr))
    if not ok:
        raise CycleBatchError(f"{path}: OpenCV could not encode a 16-bit image")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
