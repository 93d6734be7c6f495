"""What `export` accepts: the output formats and the fixed input size. No torch here: the CLI checks its
options with these before it imports the exporters (a mistyped option answers at once)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import CycleBatchError

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".tflite": "tflite", ".xml": "openvino"}
MIN_SIZE = 5  # reflect padding needs a side > 3; padded to 8, the 1/4-resolution trunk keeps 2 px


def format_of(path: str | Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise CycleBatchError(f"{path}: the output must end in .onnx (ONNX), .pt (TorchScript), "
                              f".tflite (TFLite / LiteRT) or .xml (OpenVINO IR)")
    return fmt


def check_options(out: str | Path, *, precision: str, fp16: bool = False, quantize: Optional[str] = None,
                  calibrate: object = None, size: object = None, opset: Optional[int] = None) -> str:
    """The rules between export's options, for the CLI and the library alike; the format on success."""
    fmt = format_of(out)
    if opset is not None and fmt != "onnx":
        raise CycleBatchError(f"{out}: --opset applies to .onnx outputs only")
    if fmt != "tflite" and (quantize or calibrate or size):
        raise CycleBatchError(f"{out}: --quantize, --calibrate and --size apply to .tflite outputs only")
    if precision not in ("fp32", "fp16") or (fp16 and precision != "fp16"):
        raise CycleBatchError(f"--precision {precision}{' with --fp16' if fp16 else ''}: use fp32 or fp16")
    if quantize not in (None, "int8"):
        raise CycleBatchError(f"--quantize {quantize}: only int8 is supported")
    if quantize and precision == "fp16":
        raise CycleBatchError("--quantize int8 replaces the fp32 weights: do not combine it with fp16")
    if calibrate and not quantize:
        raise CycleBatchError("--calibrate needs --quantize int8")
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
