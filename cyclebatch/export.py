"""Export a generator for runtimes without Python: ONNX (any ONNX runtime) or TorchScript (LibTorch).

The exported graph is self-contained: float RGB in [0, 1], NCHW, any batch, height and width in; the
same size out. It reflect-pads to a multiple of 4 and crops back itself, so callers need not know the
generator's stride. Every export is checked by running the file on a real photo against PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .errors import CycleBatchError
from .fileio import atomic_path
from .networks import ResnetGenerator

FORMATS = {".onnx": "onnx", ".pt": "torchscript"}
INPUT, OUTPUT = "image", "translated"
# Opset 17 is the newest that TensorRT 8.6 (JetPack 5, DeepStream 6), OpenCV's DNN module and ONNX Runtime
# >= 1.12 all run; nothing in this graph gains from a newer one.
OPSET = 17
MIN_SIZE = 5  # reflect padding needs a side > 3; padded to 8, the 1/4-resolution trunk keeps 2 px
# (max, mean) absolute difference on the [0, 1] output scale that verification accepts.
# fp32: rounding noise only (7e-7 measured on the vintage generator); fp16 measured 3e-4 max, 6e-5 mean.
TOLERANCE = {"fp32": (1e-3, 1e-4), "fp16": (0.02, 0.002)}
SAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "examples" / "photos" / "chelsea.png"


class PixelGraph(nn.Module):
    """The exported contract around a generator: [0, 1] pixels in and out, any size, fp16 inside optionally."""

    def __init__(self, net: nn.Module, fp16: bool = False):
        super().__init__()
        self.net = net
        self.fp16 = fp16
        self.multiple = int(getattr(net, "size_multiple", 4))  # 4 for ResNets, 2^downsamplings for U-Nets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = self.multiple
        # Reflect, not zero, padding: the generator was trained on reflect-padded borders.
        x = F.pad(x * 2.0 - 1.0, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        if self.fp16:
            x = x.half()
        y = self.net(x)
        return (y[:, :, :h, :w].float() + 1.0) * 0.5


@dataclass
class ExportResult:
    path: Path
    format: str  # "onnx" or "torchscript"
    precision: str  # "fp32" or "fp16"
    opset: Optional[int]
    verified: bool
    max_diff: Optional[float] = None
    mean_diff: Optional[float] = None
    sample: str = ""
    seconds: float = 0.0

    @property
    def runtime(self) -> str:
        return "ONNX Runtime" if self.format == "onnx" else "TorchScript"


def format_of(path: str | Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise CycleBatchError(f"{path}: the output must end in .onnx (ONNX) or .pt (TorchScript)")
    return fmt


def min_size(net: nn.Module) -> int:
    """Smallest H and W the file takes: reflect padding must be shorter than the side (U-Nets)."""
    return max(MIN_SIZE, net.size_multiple // 2 + 1)


def contract(net: ResnetGenerator, *, fp16: bool, source: str = "") -> dict[str, str]:
    """What a user of the file needs to know, stored in it (ONNX metadata_props / TorchScript extra file)."""
    c = net.config
    meta = {
        "input": f"{INPUT}: float32 [N, 3, H, W], RGB, values in [0, 1] (8-bit pixel / 255); "
                 f"any N, any H and W >= {min_size(net)}",
        "output": f"{OUTPUT}: float32 [N, 3, H, W], same N, H, W as the input, RGB, values in [0, 1] "
                  f"(pixel = round(value * 255))",
        "input_name": INPUT, "output_name": OUTPUT,
        "layout": "NCHW", "channel_order": "RGB", "input_range": "[0, 1]", "output_range": "[0, 1]",
        "padding": f"the graph reflect-pads H and W to a multiple of {net.size_multiple} and crops the output back",
        "precision": "fp16" if fp16 else "fp32",
        "architecture": c.describe(),
        "source_model": source or str(net.metadata.get("name") or net.metadata.get("source", "")),
        "cyclebatch_version": __version__,
    }
    for key in ("direction", "translates"):
        if net.metadata.get(key):
            meta[key] = str(net.metadata[key])
    return meta


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
    onnx.save(model, str(path))


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
        torch.jit.save(scripted, str(path),
                       _extra_files={"cyclebatch.json": json.dumps(metadata or contract(net, fp16=fp16))})


def read_metadata(path: str | Path) -> dict[str, str]:
    """The contract stored in an exported file."""
    if format_of(path) == "onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    extra = {"cyclebatch.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["cyclebatch.json"] or "{}")


# ---------------------------------------------------------------- verification

def sample_batches(min_side: int = MIN_SIZE) -> tuple[list[np.ndarray], str]:
    """Two float [0, 1] NCHW batches of different, non-multiple-of-4 sizes, cut from a real photo.

    Sizes grow by a common factor where the smaller crop would be under `min_side` (U-Nets)."""
    import cv2

    if SAMPLE_PHOTO.is_file():
        from .images import read_image

        rgb = read_image(SAMPLE_PHOTO).rgb.astype(np.float32) / 255.0
        name = SAMPLE_PHOTO.name
    else:  # an installed package without the examples folder: a deterministic, photo-like texture
        rng = np.random.default_rng(0)
        rgb = cv2.GaussianBlur(rng.random((300, 400, 3), dtype=np.float32), (0, 0), 6)
        rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min())
        name = "a synthetic texture"
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


def run_file(path: str | Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of an exported file, run by ONNX Runtime (CPU) or TorchScript."""
    if format_of(path) == "onnx":
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


def verify(path: str | Path, net: ResnetGenerator, *, precision: str = "fp32",
           name: Optional[str | Path] = None) -> tuple[float, float, str]:
    """Run the file on a real photo and compare with the fp32 PyTorch generator.

    Returns (max, mean absolute difference on the [0, 1] scale, what was run); raises CycleBatchError
    when either exceeds TOLERANCE[precision] or the output has the wrong shape.
    """
    name = name or path  # the file the user asked for, not the temporary one being checked
    batches, desc = sample_batches(min_size(net))
    reference = _prepared(net, fp16=False)
    with torch.inference_mode():
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
        diffs.append(np.abs(g.astype(np.float64) - e).ravel())
    d = np.concatenate(diffs)
    max_diff, mean_diff = float(d.max()), float(d.mean())
    max_tol, mean_tol = TOLERANCE[precision]
    if not (max_diff <= max_tol and mean_diff <= mean_tol):  # also catches NaN
        raise CycleBatchError(f"{name}: verification failed: max |diff| {max_diff:.3g} (tolerance {max_tol:g}), "
                              f"mean {mean_diff:.3g} (tolerance {mean_tol:g}) against PyTorch on {desc}")
    return max_diff, mean_diff, desc


# ---------------------------------------------------------------- the one call

def export(net: ResnetGenerator, out: str | Path, *, fp16: bool = False, opset: int = OPSET,
           check: bool = True, overwrite: bool = False, source: str = "") -> ExportResult:
    """Export to `out` (.onnx or .pt), verify it, and only then put it in place (atomically)."""
    out = Path(out)
    fmt = format_of(out)
    if out.exists() and not overwrite:
        raise CycleBatchError(f"{out}: exists; pass --overwrite to replace it")
    precision = "fp16" if fp16 else "fp32"
    start = time.perf_counter()
    result = ExportResult(out, fmt, precision, opset if fmt == "onnx" else None, check)
    meta = contract(net, fp16=fp16, source=source)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            export_onnx(net, tmp, fp16=fp16, opset=opset, metadata=meta)
        else:
            export_torchscript(net, tmp, fp16=fp16, metadata=meta)
        if check:
            result.max_diff, result.mean_diff, result.sample = verify(tmp, net, precision=precision, name=out)
    result.seconds = time.perf_counter() - start
    return result
