"""What a generator costs: multiply-accumulates per image and parameters (what `distill` promises to cut)."""

from __future__ import annotations

import torch
from torch import nn


def macs(net: nn.Module, height: int = 256, width: int = 256) -> int:
    """Multiply-accumulates of one forward pass of an H x W image, convolutions and transposed ones (the
    norms, activations and padding add well under 1%). Counted from the shapes a real pass produces, so it
    holds for every family (ResNet, U-Net) and every stride."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        w = module.weight
        per_out = w.shape[1] * w.shape[2] * w.shape[3]  # Conv2d: in/groups x kh x kw per output value
        if isinstance(module, nn.ConvTranspose2d):  # each input value scatters into out/groups x kh x kw
            total += inputs[0][0].numel() * w.shape[1] * w.shape[2] * w.shape[3]
        else:
            total += output[0].numel() * per_out

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        param = next(net.parameters())
        with torch.no_grad():
            net(torch.zeros(1, getattr(getattr(net, "config", None), "in_channels", 3), height, width,
                            dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
    return total


def parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
