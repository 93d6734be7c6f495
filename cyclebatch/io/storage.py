"""Object storage (any fsspec URL: s3://, gs://, memory://...): list, read bytes, write whole objects, exists.

Local paths and file:// URLs never come here: they keep the plain-file code path (and its speed). A URL
is carried through the pipeline as a `str`, a local location as a `Path`; that type is the only switch.
Object stores make a PUT visible only once complete, so a write there is one PUT (no temporary object
to leave behind); other fsspec file systems (sftp, ftp...) get a temporary name and a move.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Optional
from urllib.parse import unquote, urlparse

from ..errors import CycleBatchError
from .files import TMP_MARK

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
# Protocols whose writes are single whole-object PUTs: nothing partial is ever visible.
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "memory"}
# The package each protocol needs, for the one-line message when it is missing.
EXTRAS = {"s3": "pip install 'cyclebatch[s3]'", "s3a": "pip install 'cyclebatch[s3]'",
          "gs": "pip install gcsfs", "gcs": "pip install gcsfs", "az": "pip install adlfs", "abfs": "pip install adlfs"}


def is_url(location: object) -> bool:
    """A remote URL (fsspec protocol other than file://)."""
    m = _SCHEME.match(str(location)) if isinstance(location, str) else None
    return bool(m) and m.group(1).lower() != "file"


def as_location(text: str | Path) -> "Path | str":
    """A user's input/output as the pipeline carries it: Path for local (file:// included), str for a URL."""
    if isinstance(text, Path):
        return text
    if text.lower().startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return text if is_url(text) else Path(text)


def parse_options(text: Optional[str]) -> dict:
    """--storage-options: a JSON object handed to the fsspec file system (endpoint_url, key, anon...)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CycleBatchError(f"--storage-options must be a JSON object ({e.msg})") from None
    if not isinstance(value, dict):
        raise CycleBatchError("--storage-options must be a JSON object, e.g. '{\"endpoint_url\": \"http://...\"}'")
    return value


def _protocol(url: str) -> str:
    return _SCHEME.match(url).group(1).lower()


@functools.lru_cache(maxsize=16)
def _fs_cached(protocol: str, options_json: str):
    try:
        import fsspec
    except ImportError:
        raise CycleBatchError(f"{protocol}:// needs fsspec: {EXTRAS.get(protocol, EXTRAS['s3'])}") from None
    try:
        return fsspec.filesystem(protocol, **json.loads(options_json))
    except ImportError:
        hint = EXTRAS.get(protocol, f"install the fsspec package for {protocol}://")
        raise CycleBatchError(f"{protocol}:// URLs need an extra package: {hint}") from None
    except ValueError as e:  # unknown protocol
        raise CycleBatchError(f"{protocol}:// is not a storage cyclebatch can use ({e})") from None


def filesystem(url: str, options: Optional[dict] = None):
    """(fsspec file system, path without the protocol) for `url`; instances are shared per options."""
    fs = _fs_cached(_protocol(url), json.dumps(options or {}, sort_keys=True))
    return fs, fs._strip_protocol(url)


def join(root: str, rel: PurePosixPath | str) -> str:
    return root.rstrip("/") + "/" + str(rel).lstrip("/")


def list_files(url: str, options: Optional[dict] = None) -> list[str]:
    """Every object under `url` (recursive), as URLs, sorted; [] when there is nothing there."""
    fs, path = filesystem(url, options)
    fs.invalidate_cache()  # another writer (or an earlier run) may have added objects since
    try:
        found = fs.find(path)
    except FileNotFoundError:
        return []
    return sorted(fs.unstrip_protocol(p) for p in found)


def files_under(url: str, options: Optional[dict] = None) -> list[tuple[str, PurePosixPath]]:
    """[(object URL, its path relative to `url`)] for every object under the prefix `url`."""
    fs, root = filesystem(url, options)
    root = root.rstrip("/")
    fs.invalidate_cache()
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return []
    return sorted((fs.unstrip_protocol(p), PurePosixPath(p[len(root):].lstrip("/"))) for p in found
                  if p.startswith(root + "/"))


def glob(pattern: str, options: Optional[dict] = None) -> list[str]:
    fs, path = filesystem(pattern, options)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(path) if fs.isfile(p))


def is_dir(url: str, options: Optional[dict] = None) -> bool:
    fs, path = filesystem(url, options)
    try:
        return fs.isdir(path)
    except FileNotFoundError:
        return False


def exists(url: str, options: Optional[dict] = None) -> bool:
    fs, path = filesystem(url, options)
    return fs.exists(path)


def read_bytes(url: str, options: Optional[dict] = None) -> bytes:
    fs, path = filesystem(url, options)
    return fs.cat_file(path)


def write_bytes(url: str, data: bytes, options: Optional[dict] = None) -> None:
    """Write a whole object so that no reader ever sees part of it."""
    fs, path = filesystem(url, options)
    if _protocol(url) in OBJECT_STORES:
        fs.pipe_file(path, data)  # one PUT (or a multipart upload, visible only when completed)
        return
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"{parent}/{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
    fs.makedirs(parent, exist_ok=True)
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:
            pass
        raise


def location_problem(e: BaseException, url: str) -> Optional[str]:
    """Errors that no later write to that place would escape (no permission, no such bucket)."""
    if isinstance(e, PermissionError):
        return f"cannot write {url}: no permission to write there ({e})"
    if isinstance(e, FileNotFoundError):
        return f"cannot write {url}: the bucket or container does not exist ({e})"
    return None


# ---------------------------------------------------------------- pictures over object storage

def read_picture(url: str, max_pixels: int, options: Optional[dict] = None):
    """Decode an object with the same decoder as local files (via a temporary local copy, so EXIF, 16-bit
    and every other mode behave identically); errors name the URL."""
    from .images import read_image

    try:
        data = read_bytes(url, options)
    except FileNotFoundError:
        raise CycleBatchError(f"{url}: no such object") from None
    except PermissionError:
        raise CycleBatchError(f"{url}: permission denied") from None
    except OSError as e:
        raise CycleBatchError(f"{url}: cannot read ({e})") from None
    with tempfile.TemporaryDirectory(prefix="cyclebatch-") as d:
        tmp = Path(d) / ("in" + PurePosixPath(url).suffix)
        tmp.write_bytes(data)
        try:
            return read_image(tmp, max_pixels)
        except CycleBatchError as e:
            raise CycleBatchError(str(e).replace(str(tmp), url)) from None


def write_picture(url: str, pic, quality: int, options: Optional[dict] = None) -> None:
    """Encode with the local encoder into a temporary file, then upload it as one whole object."""
    from .images import write_image

    with tempfile.TemporaryDirectory(prefix="cyclebatch-") as d:
        tmp = Path(d) / ("out" + PurePosixPath(url).suffix)
        try:
            write_image(tmp, pic, quality)
        except CycleBatchError as e:
            raise CycleBatchError(str(e).replace(str(tmp), url)) from None
        write_bytes(url, tmp.read_bytes(), options)
