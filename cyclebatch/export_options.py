"""What `export` accepts: the output formats and the fixed input size. No torch here: the CLI checks its
options with these before it imports the exporters (a mistyped option answers at once)."""

from __future__ import annotations

from pathlib import Path

from .errors import CycleBatchError

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".tflite": "tflite", ".xml": "openvino"}
MIN_SIZE = 5  # reflect padding needs a side > 3; padded to 8, the 1/4-resolution trunk keeps 2 px


def format_of(path: str | Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise CycleBatchError(f"{path}: the output must end in .onnx (ONNX), .pt (TorchScript), "
                              f".tflite (TFLite / LiteRT) or .xml (OpenVINO IR)")
    return fmt


def parse_size(text: str) -> tuple[int, int]:
    """"512" or "384x256" (width x height) -> (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        w = h = -1
    if len(parts) > 2 or min(w, h) < MIN_SIZE:
        raise CycleBatchError(f"--size {text}: give N or WxH, each at least {MIN_SIZE}")
    return h, w
