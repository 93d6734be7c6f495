"""OpenVINO IR export: `openvino.convert_model` on the PyTorch module itself (no ONNX in between).

The IR (`NAME.xml` with its weights in `NAME.bin` beside it) has the ONNX export's contract: float32 RGB in
[0, 1], NCHW, any batch, height and width (input `image`), the same size out (output `translated`); the
graph reflect-pads to a multiple of 4 and crops back itself. The contract is also stored in the IR's
rt_info under `cyclebatch` (read_metadata). `--fp16` stores the weights as float16 (OpenVINO's weight
compression; it computes in float32 or bf16 as the device decides). Install with
`pip install 'cyclebatch[openvino]'`.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..engine.openvino import no_telemetry
from ..io.files import free_space
from ..errors import CycleBatchError

EXTRA = "pip install 'cyclebatch[openvino]'"
RT_INFO = "cyclebatch"


def _openvino():
    try:
        with no_telemetry():  # no usage telemetry from the import
            import openvino
    except ImportError:
        raise CycleBatchError(f"OpenVINO export needs openvino: {EXTRA}") from None
    return openvino


def export_openvino(net: nn.Module, path: str | Path, *, fp16: bool = False,
                    metadata: Optional[dict] = None) -> None:
    """Write `path` (.xml) and its .bin with dynamic batch, height and width (no verification)."""
    from ..models.graph import INPUT, OUTPUT, PixelGraph, contract, portable_copy

    ov = _openvino()
    graph = PixelGraph(portable_copy(net)).eval()
    try:
        with no_telemetry(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Traced: the tracer records the padding's size arithmetic, so any H and W work (checked by
            # verification on odd sizes). torch.export instead leaves a Python `mod` the frontend rejects.
            model = ov.convert_model(graph, example_input=torch.rand(1, 3, 64, 64),
                                     input=[ov.PartialShape([-1, 3, -1, -1])])
    except Exception as e:
        text = str(e).strip().splitlines()
        raise CycleBatchError(f"OpenVINO conversion failed: {text[0] if text else type(e).__name__}") from None
    model.inputs[0].get_tensor().set_names({INPUT})
    model.outputs[0].get_tensor().set_names({OUTPUT})
    model.set_friendly_name("cyclebatch_generator")
    for key, value in (metadata or contract(net, precision="fp16" if fp16 else "fp32")).items():
        model.set_rt_info(str(value), [RT_INFO, key])
    # compress_to_fp16 defaults to True in save_model: say what was asked.
    try:
        ov.save_model(model, str(path), compress_to_fp16=fp16)
    except RuntimeError as e:  # its C++ streams say only "iostream error": tell a full disk from other causes
        need = sum(p.numel() for p in net.parameters()) * (2 if fp16 else 4)
        free = free_space(Path(path).parent)
        if free is not None and free < need + 2**20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise OSError(errno.EIO, f"OpenVINO could not write the IR ({str(e).splitlines()[0][:120]})") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The contract stored in an IR's rt_info by cyclebatch ({} if none)."""
    ov = _openvino()
    model = ov.Core().read_model(str(path))
    if not model.has_rt_info([RT_INFO]):
        return {}
    return {key: model.get_rt_info([RT_INFO, key]).astype(str) for key in model.get_rt_info()[RT_INFO]}


def compile_model(path: str | Path, precision: str = "f32", threads: Optional[int] = None):
    """The IR compiled for the CPU. precision: "f32" (what verification uses: the file's own fidelity,
    the same on every CPU) or "bf16" (OpenVINO's default on CPUs with native bf16)."""
    ov = _openvino()
    config = {"INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(path), "CPU", config)


def run(path: str | Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of the IR for float [0, 1] NCHW batches, on the CPU in float32."""
    compiled = compile_model(path)
    return [np.asarray(compiled(b)[0]) for b in batches]
