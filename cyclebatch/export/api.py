"""Export a generator for runtimes without Python: ONNX (any ONNX runtime), TorchScript (LibTorch),
TFLite (LiteRT, phones; see export/tflite.py) or OpenVINO IR (see export/openvino.py).

The exported graph is self-contained: float RGB in [0, 1] in, the same size out. ONNX, TorchScript and
OpenVINO take NCHW at any batch, height and width: the graph reflect-pads to a multiple of 4 and crops back
itself, so callers need not know the generator's stride. TFLite takes one NHWC image of a fixed size.
Every export is checked by running the file on a real photo against PyTorch before it is kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import __version__
from ..errors import CycleBatchError
from ..io.files import atomic_path
from ..models.graph import INPUT, OUTPUT, PixelGraph, contract, fit, min_size
from .options import MIN_SIZE, check_options, format_of
from ..models.networks import ResnetGenerator

RUNTIMES = {"onnx": "ONNX Runtime", "torchscript": "TorchScript", "tflite": "LiteRT", "openvino": "OpenVINO"}
# Opset 17 is the newest that TensorRT 8.6 (JetPack 5, DeepStream 6), OpenCV's DNN module and ONNX Runtime
# >= 1.12 all run; nothing in this graph gains from a newer one.
OPSET = 17
DEFAULT_SIZE = 256  # a fixed-size (TFLite) export's side when the model's metadata names no input_size
# (max, mean) absolute difference on the [0, 1] output scale that verification accepts.
# fp32: rounding noise only (7e-7 measured on the vintage generator); fp16 measured 3e-4 max, 6e-5 mean.
TOLERANCE = {"fp32": (1e-3, 1e-4), "fp16": (0.02, 0.002)}
# TFLite and OpenVINO files are judged by PSNR against PyTorch fp32 on the [0, 1] scale (peak 1, the same
# figure as on 8-bit pixels). Measured on the vintage generator (resnet_9blocks) on chelsea.png: TFLite at
# 256 / 512 px fp32 141 / 132 dB, fp16 weights 94 / 95 dB, int8 dynamic-range 43.7 / 43.5 dB, int8
# calibrated 39.2 / 40.2 dB (full-integer int8, norms and all: 18 dB, so it is not offered); OpenVINO IR
# fp32 128 dB, fp16 weights 86 dB.
PSNR_FLOOR = {"fp32": 50.0, "fp16": 40.0, "int8": 35.0}
SAMPLE_PHOTO = Path(__file__).resolve().parents[2] / "examples" / "photos" / "chelsea.png"  # cyclebatch/export/api.py


@dataclass
class ExportResult:
    path: Path
    format: str  # "onnx", "torchscript", "tflite" or "openvino"
    precision: str  # "fp32", "fp16" or "int8" (TFLite)
    opset: Optional[int]
    verified: bool
    max_diff: Optional[float] = None
    mean_diff: Optional[float] = None
    sample: str = ""
    seconds: float = 0.0
    psnr: Optional[float] = None  # dB against PyTorch fp32 on the sample, peak 1
    size: Optional[tuple[int, int]] = None  # (height, width) of a fixed-size (TFLite) file
    quantization: str = ""  # TFLite int8: "dynamic-range" or "calibrated" (see export_tflite)
    files: tuple[Path, ...] = ()  # everything written (OpenVINO: the .xml and its .bin)

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.format]

    @property
    def floor(self) -> Optional[float]:
        return PSNR_FLOOR[self.precision] if self.format in ("tflite", "openvino") else None

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files or (self.path,))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB between two arrays on a [0, peak] scale (inf when equal, NaN if either has NaN)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(peak ** 2 / mse))


@contextlib.contextmanager
def _quiet_exporters():
    # The exporters' progress lines, deprecation notes and "torchvision is not installed" warnings are for
    # us, not for the user of `cyclebatch export`.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _prepared(net: ResnetGenerator, fp16: bool) -> PixelGraph:
    import copy

    net = copy.deepcopy(net).eval().requires_grad_(False).float()
    if any(n.stats_hook is not None for n in net.norms()):
        raise CycleBatchError("this generator has InstanceNorm statistics hooks installed (tiling/video); "
                              "export the plain generator")
    return PixelGraph(net.half() if fp16 else net, fp16).eval()


def _declare_opset(model, opset: int):
    """Declare an older opset than the exporter's minimum (18) when no node's definition differs in between."""
    import onnx

    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        same = onnx.defs.get_schema(node.op_type, current).since_version <= opset
        # Pad-18 only added the optional `axes` input; without it, it is Pad-13.
        pad13 = node.op_type == "Pad" and len([i for i in node.input if i]) <= 3
        if not (same or pad13):
            raise CycleBatchError(f"the graph uses {node.op_type}-{current}, which opset {opset} lacks; "
                                  f"use --opset {current}")
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    return model


def export_onnx(net: ResnetGenerator, path: str | Path, *, fp16: bool = False, opset: int = OPSET,
                metadata: Optional[dict] = None) -> None:
    """Write an ONNX file with dynamic batch, height and width (no verification; see `export`)."""
    try:
        import onnx
    except ImportError:
        raise CycleBatchError("ONNX export needs onnx, onnxscript and onnxruntime: "
                              "pip install 'cyclebatch[onnx]'") from None
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if not OPSET <= opset <= newest:
        raise CycleBatchError(f"opset {opset} is not supported: use {OPSET} to {newest}")
    graph = _prepared(net, fp16)
    dyn = torch.export.Dim.DYNAMIC
    side = max(64, net.size_multiple * 3 // 2 + 4)  # traced symbolically; padded, never a pad of 0 or >= the side
    sample = torch.rand(2, 3, side, side)
    with _quiet_exporters():
        try:
            program = torch.onnx.export(
                graph, (sample,), None, dynamo=True, opset_version=max(opset, 18), verbose=False,
                input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes={"x": {0: dyn, 2: dyn, 3: dyn}})
        except ImportError as e:
            raise CycleBatchError(f"ONNX export needs {e.name or 'onnxscript'}: pip install 'cyclebatch[onnx]'") from None
    model = program.model_proto
    if opset < 18:
        model = _declare_opset(model, opset)
    model.producer_name, model.producer_version = "cyclebatch", __version__
    model.doc_string = "CycleGAN generator exported by cyclebatch; see metadata_props for the input/output contract"
    # Name the symbolic dimensions for readers of the file (the exporter calls them s0, s1, ...).
    for value in (*model.graph.input, *model.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", "", "height", "width")):
            if name:
                dim.dim_param = name
    onnx.helper.set_model_props(model, metadata or contract(net, fp16=fp16))
    onnx.checker.check_model(model)
    # Serialised here and written by Python: a full disk is then an OSError, not a library's own error type.
    Path(path).write_bytes(model.SerializeToString())


def export_torchscript(net: ResnetGenerator, path: str | Path, *, fp16: bool = False,
                       metadata: Optional[dict] = None) -> None:
    """Write a TorchScript file for LibTorch; the contract is in its extra file `cyclebatch.json`."""
    graph = _prepared(net, fp16)
    dtype = torch.float16 if fp16 else torch.float32
    with _quiet_exporters():
        # Trace the generator (size-independent ops), script the wrapper (its padding depends on the size).
        side = max(64, net.size_multiple)  # the generator itself sees padded sizes only
        graph.net = torch.jit.trace(graph.net, torch.rand(1, 3, side, side, dtype=dtype), check_trace=False)
        scripted = torch.jit.script(graph)
        buffer = io.BytesIO()  # torch's file writer aborts the process when the disk fills: write the bytes here
        torch.jit.save(scripted, buffer,
                       _extra_files={"cyclebatch.json": json.dumps(metadata or contract(net, fp16=fp16))})
    Path(path).write_bytes(buffer.getvalue())


def read_metadata(path: str | Path) -> dict[str, str]:
    """The contract stored in an exported file."""
    fmt = format_of(path)
    if fmt == "tflite":
        from .tflite import read_metadata as read_tflite

        return read_tflite(path)
    if fmt == "openvino":
        from .openvino import read_metadata as read_ir

        return read_ir(path)
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    extra = {"cyclebatch.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["cyclebatch.json"] or "{}")


# ---------------------------------------------------------------- verification

def _sample_rgb() -> tuple[np.ndarray, str]:
    """The verification photo as float [0, 1] HxWx3, and its name."""
    import cv2

    if SAMPLE_PHOTO.is_file():
        from ..io.images import read_image

        rgb = read_image(SAMPLE_PHOTO).rgb.astype(np.float32) / 255.0
        return rgb, SAMPLE_PHOTO.name
    # an installed package without the examples folder: a deterministic, photo-like texture
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.random((300, 400, 3), dtype=np.float32), (0, 0), 6)
    return (rgb - rgb.min()) / (rgb.max() - rgb.min()), "a synthetic texture"


def sample_batches(min_side: int = MIN_SIZE) -> tuple[list[np.ndarray], str]:
    """Two float [0, 1] NCHW batches of different, non-multiple-of-4 sizes, cut from a real photo.

    Sizes grow by a common factor where the smaller crop would be under `min_side` (U-Nets)."""
    import cv2

    rgb, name = _sample_rgb()
    h, w = rgb.shape[:2]
    f = max(1.0, min_side / 94)
    scale = 192 * f / min(h, w)
    small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    a, b, c, d = (round(n * f) for n in (183, 250, 94, 126))
    first = small[:a, :b]
    second = np.stack([small[:c, :d], small[-c:, -d:]])
    batches = [first.transpose(2, 0, 1)[None], second.transpose(0, 3, 1, 2)]
    desc = f"{name} (1x{first.shape[0]}x{first.shape[1]} and 2x{c}x{d})"
    return [np.ascontiguousarray(b, dtype=np.float32) for b in batches], desc


def sample_image(height: int, width: int) -> tuple[np.ndarray, str]:
    """The real photo fitted to height x width, as a float [0, 1] NHWC batch of one (a TFLite input)."""
    rgb, name = _sample_rgb()
    return np.ascontiguousarray(fit(rgb, height, width)[None], dtype=np.float32), f"{name} ({width}x{height})"


def run_file(path: str | Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of an exported file, run by ONNX Runtime (CPU), TorchScript, LiteRT or OpenVINO (CPU).

    `batches` are float [0, 1] arrays in the file's layout: NCHW, or NHWC of its fixed size for TFLite."""
    fmt = format_of(path)
    if fmt == "tflite":
        from . import tflite as export_tflite

        return export_tflite.run(path, batches)
    if fmt == "openvino":
        from . import openvino as export_openvino

        return export_openvino.run(path, batches)
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise CycleBatchError("verifying an ONNX file needs onnxruntime: pip install 'cyclebatch[onnx]' "
                                  "(or pass --no-verify)") from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [session.run([OUTPUT], {INPUT: b})[0] for b in batches]
    with _quiet_exporters():
        module = torch.jit.load(str(path), map_location="cpu")
    # The profiling executor would spend seconds optimizing for a couple of calls.
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        return [module(torch.from_numpy(b)).numpy() for b in batches]


@dataclass
class Verification:
    max_diff: float  # absolute, on the [0, 1] output scale
    mean_diff: float
    psnr: float  # dB, peak 1
    sample: str  # what was run


def verify(path: str | Path, net: ResnetGenerator, *, precision: str = "fp32",
           name: Optional[str | Path] = None, size: Optional[tuple[int, int]] = None) -> Verification:
    """Run the file on a real photo and compare with the fp32 PyTorch generator.

    ONNX and TorchScript must stay within TOLERANCE[precision] (max and mean absolute difference);
    TFLite and OpenVINO files must reach PSNR_FLOOR[precision]. A fixed-size (TFLite) file is run on the
    photo fitted to `size` (height, width), the others on two odd-sized batches. Raises CycleBatchError
    when the file fails either test, does not run, or gives the wrong shape.
    """
    name = name or path  # the file the user asked for, not the temporary one being checked
    fmt = format_of(path)
    if size is not None:
        image, desc = sample_image(*size)
        batches, layout = [image], "NHWC"
    else:
        batches, desc = sample_batches(min_size(net))
        layout = "NCHW"
    reference = _prepared(net, fp16=False)
    with torch.inference_mode():
        if layout == "NHWC":
            expected = [reference(torch.from_numpy(b).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
                        for b in batches]
        else:
            expected = [reference(torch.from_numpy(b)).numpy() for b in batches]
    try:
        got = run_file(path, batches)
    except CycleBatchError:
        raise
    except Exception as e:  # a runtime that cannot load or run the file is a failed verification
        raise CycleBatchError(f"{name}: verification failed, the file does not run: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    diffs = []
    for b, e, g in zip(batches, expected, got):
        if g.shape != e.shape:
            raise CycleBatchError(f"{name}: verification failed, input {list(b.shape)} gave output "
                                  f"{list(g.shape)} (expected {list(e.shape)})")
        diffs.append((np.asarray(g, np.float64) - e).ravel())
    d = np.concatenate(diffs)
    mse = float(np.mean(d ** 2))
    check = Verification(float(np.abs(d).max()), float(np.abs(d).mean()),
                         float("inf") if mse == 0 else -10 * float(np.log10(mse)), desc)
    if fmt in ("tflite", "openvino"):
        floor = PSNR_FLOOR[precision]
        if not check.psnr >= floor:  # also catches NaN
            raise CycleBatchError(f"{name}: verification failed: PSNR {check.psnr:.1f} dB against PyTorch fp32 "
                                  f"on {desc}, below the {floor:g} dB floor for {precision}")
        return check
    max_tol, mean_tol = TOLERANCE[precision]
    if not (check.max_diff <= max_tol and check.mean_diff <= mean_tol):  # also catches NaN
        raise CycleBatchError(f"{name}: verification failed: max |diff| {check.max_diff:.3g} (tolerance {max_tol:g}), "
                              f"mean {check.mean_diff:.3g} (tolerance {mean_tol:g}) against PyTorch on {desc}")
    return check


# ---------------------------------------------------------------- the one call

def default_size(net: ResnetGenerator) -> tuple[int, int]:
    """A fixed-size export's (height, width): the model's training size from its metadata, else 256."""
    try:
        side = int(net.metadata.get("input_size") or DEFAULT_SIZE)
    except (TypeError, ValueError):
        side = DEFAULT_SIZE
    return side, side


def export(net: ResnetGenerator, out: str | Path, *, fp16: bool = False, opset: int = OPSET,
           check: bool = True, overwrite: bool = False, source: str = "", precision: Optional[str] = None,
           quantize: Optional[str] = None, calibrate: Optional[str | Path] = None,
           size: Optional[tuple[int, int]] = None) -> ExportResult:
    """Export to `out` (.onnx, .pt, .tflite or .xml), verify it, and only then put it in place (atomically).

    precision: "fp32" or "fp16" (`fp16=True` is the same as "fp16"); quantize="int8" (TFLite: dynamic-range,
    or calibrated int8 activations in the residual blocks when `calibrate` names a folder of images);
    size (height, width): TFLite's fixed input size, default default_size(net).
    """
    out = Path(out)
    precision = precision or ("fp16" if fp16 else "fp32")
    fmt = check_options(out, precision=precision, fp16=fp16, quantize=quantize, calibrate=calibrate, size=size)
    outputs = [out, out.with_suffix(".bin")] if fmt == "openvino" else [out]
    for p in outputs:
        if p.exists() and not overwrite:
            raise CycleBatchError(f"{p}: exists; pass --overwrite to replace it")
    if quantize:
        precision = "int8"
    if fmt == "tflite":
        size = size or default_size(net)
        if min(size) < MIN_SIZE:
            raise CycleBatchError(f"--size {size[1]}x{size[0]}: each side must be at least {MIN_SIZE}")
    start = time.perf_counter()
    result = ExportResult(out, fmt, precision, opset if fmt == "onnx" else None, check, size=size,
                          files=tuple(outputs))
    meta = contract(net, precision=precision, source=source, size=size)
    if fmt == "tflite":
        from . import tflite as export_tflite

        result.quantization = ("calibrated" if calibrate else "dynamic-range") if quantize else ""
        if quantize:
            meta["quantization"] = export_tflite.QUANTIZATION[result.quantization]
        with atomic_path(out) as tmp:
            export_tflite.export_tflite(net, tmp, size=size, precision=precision, calibrate=calibrate,
                                        metadata=meta)
            if check:
                _record(result, verify(tmp, net, precision=precision, name=out, size=size))
    elif fmt == "openvino":
        from . import openvino as export_openvino
        from ..engine.openvino import atomic_ir

        with atomic_ir(out) as tmp:
            export_openvino.export_openvino(net, tmp, fp16=precision == "fp16", metadata=meta)
            if check:
                _record(result, verify(tmp, net, precision=precision, name=out))
    else:
        with atomic_path(out) as tmp:
            if fmt == "onnx":
                export_onnx(net, tmp, fp16=precision == "fp16", opset=opset, metadata=meta)
            else:
                export_torchscript(net, tmp, fp16=precision == "fp16", metadata=meta)
            if check:
                _record(result, verify(tmp, net, precision=precision, name=out))
    result.seconds = time.perf_counter() - start
    return result


def _record(result: ExportResult, v: Verification) -> None:
    result.max_diff, result.mean_diff, result.psnr, result.sample = v.max_diff, v.mean_diff, v.psnr, v.sample
