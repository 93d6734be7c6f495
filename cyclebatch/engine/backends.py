"""Which engine runs a full-frame pass: the engine's own PyTorch path, OpenVINO, or the faster of the two.

A backend takes a [-1, 1] NCHW float batch (any size) and gives the translated batch back in the same
form; everything around it (pixels, batching, memory, the non-finite check) stays in engine.Translator.
Tiled images and video statistics sharing need the network's layers (InstanceNorm hooks), so they
always run on the torch path; the Translator counts which backend ran which image (`stats.backends`).

`auto` picks per shape class the backend that measured faster on this CPU (calibration.py), and is
plain torch when OpenVINO is not installed or the device is not a CPU.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import CycleBatchError

BACKENDS = ("torch", "openvino", "auto")


class Backend(Protocol):
    name: str  # what the summary shows, e.g. "openvino bf16"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] NCHW float in (on the engine's device), [-1, 1] NCHW out, same N, H and W."""


class TorchBackend:
    """The Translator's own PyTorch model (bf16 weights, Winograd trunk, channels_last on CPU)."""

    def __init__(self, translator):
        self.t = translator
        self.name = f"torch {translator.precision}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.t
        t.adapt_threads()
        return t.torch_forward(x)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def make_backend(name: str, translator, model) -> Backend:
    """The backend `name` for this Translator; `model` is the caller's fp32 generator (what OpenVINO converts)."""
    if name not in BACKENDS:
        raise CycleBatchError(f"unknown backend '{name}' (use {', '.join(BACKENDS)})")
    torch_backend = TorchBackend(translator)
    if name == "torch":
        return torch_backend
    usable = translator.device.type == "cpu" and translator.precision in ("fp32", "bf16")
    if name == "auto":
        if not usable or not openvino_available():
            return torch_backend  # nothing to choose between: no calibration
        from .openvino import OpenVINOBackend
        from .calibration import AutoBackend

        return AutoBackend(translator, torch_backend, OpenVINOBackend(model, translator.precision))
    if translator.device.type != "cpu":
        raise CycleBatchError(f"the openvino backend runs on the CPU, not {translator.device} (use --device cpu)")
    if not usable:
        raise CycleBatchError(f"the openvino backend runs fp32 or bf16, not {translator.precision}")
    if getattr(translator, "compiled", False):
        raise CycleBatchError("--compile applies to the torch backend only")
    from .openvino import OpenVINOBackend

    return OpenVINOBackend(model, translator.precision)
