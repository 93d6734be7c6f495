"""TFLite (LiteRT) export for phones: Google's PyTorch-to-LiteRT converter (litert-torch), then the LiteRT
quantizer (ai-edge-quantizer) for fp16 weights or int8.

The file takes one float32 NHWC RGB image in [0, 1] of a fixed size (input `image`) and returns the same
shape and range (output `translated`), in the signature `serving_default`. Its contract is stored as JSON in
the model's metadata entry `cyclebatch` (read_metadata). Install with `pip install 'cyclebatch[tflite]'`.

Variants (measured on the vintage generator, see PSNR_FLOOR in export.py and the README):
- fp32: the converted graph as it is.
- fp16: weights stored as float16 and expanded to float32 when the interpreter loads the file; half the size.
- int8, dynamic-range: int8 weights (per output channel); activations quantized on the fly by the kernels.
- int8 with --calibrate DIR: int8 weights and calibrated (static) int8 activations for the residual blocks'
  convolutions, which hold most of the multiply-adds; the first and last layers, down- and up-sampling and
  InstanceNorm stay float, because int8 there costs too much fidelity (full-integer: 18 dB on vintage).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..errors import CycleBatchError, first_line

SIGNATURE = "serving_default"
METADATA_NAME = "cyclebatch"
EXTRA = "pip install 'cyclebatch[tflite]'"
CALIBRATION_IMAGES = 16  # at most this many images of --calibrate DIR, spread evenly over the folder
# The layers a calibrated (static) int8 export quantizes: those inside the residual blocks. Tensor names in
# the converted file carry the PyTorch module path, e.g. ".../cyclebatch.networks.ResnetBlock_10/...Conv2d_1".
STATIC_SCOPE = "ResnetBlock"
QUANTIZATION = {
    "dynamic-range": "int8 weights (per output channel); activations quantized on the fly by the kernels",
    "calibrated": "int8 weights; int8 activations calibrated on sample images for the residual blocks' "
                  "convolutions; first and last layers, down/up-sampling and InstanceNorm in float32",
}


def _require_converter():
    try:
        with quiet():
            import ai_edge_quantizer  # noqa: F401
            import litert_torch
    except ImportError as e:
        raise CycleBatchError(f"TFLite export needs litert-torch (missing {e.name}): {EXTRA}") from None
    return litert_torch


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise CycleBatchError(f"running a TFLite file needs ai-edge-litert: {EXTRA}") from None
    return Interpreter


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the converter: its progress lines, Python warnings and the native libraries' log lines
    (absl, XNNPACK, torchao), which write to the process's stdout and stderr file descriptors directly."""
    env = {"LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "2"}
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:  # no such descriptor (an embedding host): nothing to silence
                    pass
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy_fd in saved:
                os.dup2(copy_fd, fd)
                os.close(copy_fd)
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


# ---------------------------------------------------------------- the graph

class CroppedConvTranspose2d(nn.Module):
    """ConvTranspose2d(padding p, output_padding q) as ConvTranspose2d(padding 0) and a crop of p rows and
    columns at the top-left and p - q at the bottom-right: the same numbers (the padded transposed
    convolution is a window of the unpadded one). The converter cannot legalize the padded form
    ("failed to legalize operation 'mhlo.convolution'") and converts this one."""

    def __init__(self, conv: nn.ConvTranspose2d):
        super().__init__()
        if conv.padding_mode != "zeros" or any(q > p for p, q in zip(conv.padding, conv.output_padding)):
            raise CycleBatchError(f"cannot rewrite {conv} for TFLite (output_padding larger than padding)")
        self.conv = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                       padding=0, output_padding=0, groups=conv.groups,
                                       bias=conv.bias is not None, dilation=conv.dilation)
        self.conv.load_state_dict(conv.state_dict())
        (self.top, self.left), (q_h, q_w) = conv.padding, conv.output_padding
        self.bottom, self.right = self.top - q_h, self.left - q_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[:, :, self.top:y.shape[2] - self.bottom, self.left:y.shape[3] - self.right]


def rewrite_for_tflite(net: nn.Module) -> nn.Module:
    """Replace (in place) every padded ConvTranspose2d by its CroppedConvTranspose2d twin."""
    for name, child in net.named_children():
        if isinstance(child, nn.ConvTranspose2d) and (any(child.padding) or any(child.output_padding)):
            setattr(net, name, CroppedConvTranspose2d(child))
        else:
            rewrite_for_tflite(child)
    return net


class NHWCGraph(nn.Module):
    """The TFLite contract around export_graph.PixelGraph: one NHWC [0, 1] image in, the same shape out."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.pixels = graph  # not "graph": torch.export reserves that name

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        # .contiguous(): the generator should see plain NCHW memory, as when it is exported anywhere else.
        y = self.pixels(image.permute(0, 3, 1, 2).contiguous())
        return {"translated": y.permute(0, 2, 3, 1)}


def tflite_graph(net: nn.Module) -> NHWCGraph:
    """What gets converted: a copy of the generator with portable layers, inside the NHWC pixel contract."""
    from ..models.graph import PixelGraph, portable_copy

    return NHWCGraph(PixelGraph(rewrite_for_tflite(portable_copy(net)))).eval()


# ---------------------------------------------------------------- conversion and quantization

def convert(net: nn.Module, size: tuple[int, int]) -> bytes:
    """The fp32 TFLite flatbuffer of `net` for one [1, H, W, 3] image."""
    litert_torch = _require_converter()
    graph = tflite_graph(net)
    sample = torch.rand(1, size[0], size[1], 3)
    try:
        with quiet():
            model = litert_torch.convert(graph, sample_kwargs={"image": sample})
            return bytes(model.model_content())
    except CycleBatchError:
        raise
    except Exception as e:
        raise CycleBatchError(f"TFLite conversion failed: {first_line(e)}") from None


def _fp16_recipe() -> list[dict]:
    return [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
             "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                           "compute_precision": "FLOAT", "explicit_dequantize": True}}]


def _static_recipe() -> list[dict]:
    int8 = {"activation_tensor_config": {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE",
                                         "dtype": "INT"},
            "weight_tensor_config": {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE",
                                     "dtype": "INT"},
            "compute_precision": "INTEGER", "explicit_dequantize": False}
    return [{"regex": STATIC_SCOPE, "operation": "CONV_2D", "algorithm_key": "min_max_uniform_quantize",
             "op_config": int8}]


def quantize(fp32: bytes, precision: str, calibration: Optional[list[np.ndarray]] = None) -> bytes:
    """fp16 weights, or int8 (dynamic-range; static for the residual blocks when `calibration` images are
    given). The input and output stay float32 [0, 1]."""
    _require_converter()
    from ai_edge_quantizer import quantizer, recipe

    if precision == "fp16":
        rules = _fp16_recipe()
    elif calibration:
        rules = _static_recipe()
    else:
        rules = recipe.dynamic_wi8_afp32()
    try:
        with quiet():
            q = quantizer.Quantizer(bytearray(fp32), rules)
            result = None
            if q.need_calibration:
                data = {SIGNATURE: [{"image": image} for image in calibration or []]}
                result = q.calibrate(data, num_threads=max(1, min(16, os.cpu_count() or 1)))
            return bytes(q.quantize(result, enable_progress_bar=False, enable_progress_report=False).quantized_model)
    except Exception as e:
        raise CycleBatchError(f"TFLite {precision} quantization failed: {first_line(e)}") from None


def calibration_images(folder: str | Path, size: tuple[int, int]) -> tuple[list[np.ndarray], int]:
    """Up to CALIBRATION_IMAGES images of `folder` (recursive), fitted to size as [1, H, W, 3] float [0, 1];
    and how many unreadable images were skipped."""
    from ..io.discover import expand
    from ..models.graph import fit
    from ..io.images import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise CycleBatchError(f"--calibrate {folder}: not a folder")
    paths = [src for src, _ in expand([str(folder)])[0]]
    if len(paths) > CALIBRATION_IMAGES:
        paths = [paths[round(i * (len(paths) - 1) / (CALIBRATION_IMAGES - 1))] for i in range(CALIBRATION_IMAGES)]
    images, skipped = [], 0
    for p in paths:
        try:
            rgb = read_image(p).rgb
        except CycleBatchError:
            skipped += 1
            continue
        rgb = rgb.astype(np.float32) / float(np.iinfo(rgb.dtype).max)
        images.append(np.ascontiguousarray(fit(rgb, *size)[None], dtype=np.float32))
    if not images:
        raise CycleBatchError(f"--calibrate {folder}: no readable images in the folder")
    return images, skipped


# ---------------------------------------------------------------- metadata

def with_metadata(model: bytes, meta: dict[str, str]) -> bytes:
    """The flatbuffer with `meta` as JSON in the metadata entry `cyclebatch` (replacing an older one)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    obj.buffers.append(buffer)
    entries = [m for m in (obj.metadata or []) if (m.name or b"") not in (METADATA_NAME, METADATA_NAME.encode())]
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(obj.buffers) - 1
    obj.metadata = entries + [entry]
    obj.description = "CycleGAN generator exported by cyclebatch; metadata 'cyclebatch' holds the contract"
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The contract stored in a TFLite file by cyclebatch ({} if none)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise CycleBatchError(f"reading a TFLite file needs ai-edge-litert: {EXTRA}") from None
    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() in (METADATA_NAME.encode(), METADATA_NAME):
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset():  # stored after the flatbuffer (files over 2 GB)
                raw = data[buffer.Offset():buffer.Offset() + buffer.Size()]
            else:
                raw = buffer.DataAsNumpy().tobytes()
            return json.loads(raw.decode())
    return {}


# ---------------------------------------------------------------- writing and running

def export_tflite(net: nn.Module, path: str | Path, *, size: tuple[int, int], precision: str = "fp32",
                  calibrate: Optional[str | Path] = None, metadata: Optional[dict] = None) -> None:
    """Write the TFLite file (no verification; see export.export). precision: fp32, fp16 or int8."""
    from ..models.graph import contract

    calibration = calibration_images(calibrate, size)[0] if calibrate else None
    model = convert(net, size)
    if precision != "fp32":
        model = quantize(model, precision, calibration)
    model = with_metadata(model, metadata or contract(net, precision=precision, size=size))
    Path(path).write_bytes(model)


def interpreter(path: str | Path, threads: Optional[int] = None):
    """A LiteRT interpreter (XNNPACK on CPU) for the file, tensors allocated."""
    Interpreter = _interpreter_class()
    with quiet():
        it = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
        it.allocate_tensors()
    return it


def run(path: str | Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of the file for float [0, 1] NHWC images (each of the file's fixed size, batch 1)."""
    it = interpreter(path)
    runner = it.get_signature_runner(SIGNATURE)
    want = [int(v) for v in runner.get_input_details()["image"]["shape"]]
    for b in batches:  # the runner would resize the graph to another shape and return nonsense
        if list(b.shape[1:]) != want[1:]:
            raise ValueError(f"it takes {want} images, not {list(b.shape)}")
    with quiet():
        return [np.concatenate([runner(image=b[i:i + 1])["translated"] for i in range(len(b))]) for b in batches]
