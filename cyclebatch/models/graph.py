"""What every export format shares: the graph around the generator ([0, 1] pixels in and out, any size),
the contract written into each file, the converter-friendly copy of the network, and the sample fit.

Its own module so that export.py (ONNX, TorchScript, verification) and the format modules
(export/tflite.py, export/openvino.py, engine/openvino.py) all import it, and not each other.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..errors import CycleBatchError
from .networks import ResnetGenerator

INPUT, OUTPUT = "image", "translated"


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


def min_size(net: nn.Module) -> int:
    """Smallest H and W the file takes: reflect padding must be shorter than the side (U-Nets)."""
    return net.min_side


def contract(net: ResnetGenerator, *, fp16: bool = False, source: str = "", precision: Optional[str] = None,
             size: Optional[tuple[int, int]] = None) -> dict[str, str]:
    """What a user of the file needs to know, stored in it (ONNX metadata_props, TorchScript extra file,
    TFLite metadata `cyclebatch`, OpenVINO rt_info `cyclebatch`). `size` (height, width): a fixed-size NHWC
    file (TFLite); without it, NCHW at any batch and size."""
    c = net.config
    if size is None:
        meta = {
            "input": f"{INPUT}: float32 [N, 3, H, W], RGB, values in [0, 1] (8-bit pixel / 255); "
                     f"any N, any H and W >= {min_size(net)}",
            "output": f"{OUTPUT}: float32 [N, 3, H, W], same N, H, W as the input, RGB, values in [0, 1] "
                      f"(pixel = round(value * 255))",
            "input_name": INPUT, "output_name": OUTPUT,
            "layout": "NCHW", "channel_order": "RGB", "input_range": "[0, 1]", "output_range": "[0, 1]",
            "padding": f"the graph reflect-pads H and W to a multiple of {net.size_multiple} and crops the "
                       "output back",
        }
    else:
        h, w = size
        meta = {
            "input": f"{INPUT}: float32 [1, {h}, {w}, 3], RGB, values in [0, 1] (8-bit pixel / 255); "
                     f"resize or crop other images to {w}x{h} first",
            "output": f"{OUTPUT}: float32 [1, {h}, {w}, 3], RGB, values in [0, 1] (pixel = round(value * 255))",
            "input_name": INPUT, "output_name": OUTPUT,
            "layout": "NHWC", "channel_order": "RGB", "input_range": "[0, 1]", "output_range": "[0, 1]",
            "height": str(h), "width": str(w),
            "padding": f"the graph reflect-pads H and W to a multiple of {net.size_multiple} and crops the "
                       "output back" if h % net.size_multiple or w % net.size_multiple
                       else f"none needed (H and W are multiples of {net.size_multiple})",
        }
    meta.update({
        "precision": precision or ("fp16" if fp16 else "fp32"),
        "architecture": c.describe(),
        "source_model": source or str(net.metadata.get("name") or net.metadata.get("source", "")),
        "cyclebatch_version": __version__,
    })
    for key in ("direction", "translates"):
        if net.metadata.get(key):
            meta[key] = str(net.metadata[key])
    return meta


def portable_copy(net: nn.Module) -> nn.Module:
    """An fp32 eval copy of the generator whose norms are plain torch layers, for converters that trace it
    (TFLite, OpenVINO): cyclebatch's InstanceNorm picks CPU-specific kernels by memory layout (float64
    partial sums on channels_last input, which TFLite cannot lower), and hooks must not be baked in."""
    import copy

    net = copy.deepcopy(net).eval().requires_grad_(False).float()
    if any(getattr(m, "stats_hook", None) is not None for m in net.modules()):
        raise CycleBatchError("this generator has InstanceNorm statistics hooks installed (tiling/video); "
                              "export the plain generator")

    def replace(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.InstanceNorm2d) and type(child) is not nn.InstanceNorm2d:
                plain = nn.InstanceNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
            else:
                replace(child)

    replace(net)
    return net


def fit(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale an HxWx3 float image to cover height x width (area filter when shrinking), crop the centre."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    y, x = (size[1] - height) // 2, (size[0] - width) // 2
    return np.clip(small[y:y + height, x:x + width], 0, 1)
