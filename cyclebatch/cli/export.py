"""`cyclebatch export`: ONNX, TorchScript, TFLite and OpenVINO files, verified."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import CycleBatchError
from .common import check_output_file, fail, out, plain, writing


def export_cmd(model: str = typer.Argument(..., help="Any model the registry can load: name, run, folder or file."),
               dst: Path = typer.Argument(..., help="Output file: .onnx (ONNX), .pt (TorchScript), .tflite (TFLite / "
                                               "LiteRT, phones) or .xml (OpenVINO IR, with its .bin)."),
               direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
               precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default) or fp16: half-precision "
                                                       "weights (float32 input and output stay).", show_default=False),
               fp16: bool = typer.Option(False, "--fp16", help="Same as --precision fp16."),
               quantize: Optional[str] = typer.Option(None, "--quantize", help=".tflite: int8 weights "
                                                      "(dynamic-range; see --calibrate).", show_default=False),
               calibrate: Optional[Path] = typer.Option(None, "--calibrate", help=".tflite with --quantize int8: a "
                                                        "folder of sample images to calibrate int8 activations.",
                                                        show_default=False),
               size: Optional[str] = typer.Option(None, "--size", help=".tflite: the fixed input size, N or WxH "
                                                  "(default: the model's training size, else 256).", show_default=False),
               opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17).", show_default=False),
               no_verify: bool = typer.Option(False, "--no-verify", help="Skip running the file against PyTorch."),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output.")) -> None:
    """Export a generator for ONNX runtimes, LibTorch, LiteRT (phones) or OpenVINO; verified against PyTorch on a real photo."""
    from ..export.options import check_options, parse_size

    try:
        fmt = check_options(dst, precision=precision or ("fp16" if fp16 else "fp32"), fp16=fp16, quantize=quantize,
                            calibrate=calibrate, size=size, opset=opset)
        fixed = parse_size(size) if size else None
    except CycleBatchError as e:
        fail(str(e), 2)
    for p in (dst, dst.with_suffix(".bin")) if fmt == "openvino" else (dst,):
        check_output_file(p, overwrite)
    from ..export.api import OPSET, export
    from ..models.registry import load_generator

    net = load_generator(model, direction)
    with writing(dst):
        r = export(net, dst, precision=precision or ("fp16" if fp16 else "fp32"), quantize=quantize,
                   calibrate=calibrate, size=fixed, opset=opset or OPSET, check=not no_verify, overwrite=overwrite,
                   source=model)
    notes = [net.config.name, f"{r.precision} {r.quantization}".strip()]
    if r.opset:
        notes.append(f"opset {r.opset}")
    if r.size:
        notes.append(f"input 1x{r.size[0]}x{r.size[1]}x3 NHWC")
    files = " + ".join(p.name for p in r.files[1:])
    out.print(f"wrote {plain(dst)}{f' (+ {plain(files)})' if files else ''} ({', '.join(notes)}, {r.bytes / 1e6:.1f} MB, "
              f"{r.seconds:.1f} s)", highlight=False, soft_wrap=True)
    if r.verified:
        floor = f" (floor {r.floor:g} dB)" if r.floor is not None else ""
        out.print(f"verified with {r.runtime} on {r.sample}: PSNR {r.psnr:.1f} dB{floor}, max |diff| {r.max_diff:.2e}, "
                  f"mean {r.mean_diff:.2e} (of the [0, 1] range)", highlight=False, soft_wrap=True)
    else:
        out.print("not verified (--no-verify)", highlight=False)
