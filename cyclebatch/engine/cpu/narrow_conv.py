"""The generator's last convolution (64 -> 3 channels, 7x7) as a native direct convolution on CPU.

Why: oneDNN runs a convolution with 3 output channels at about a fifth of the matmul peak (measured
15.7 ms of a 211 ms bf16 pass at 256 px, for 0.6% of its arithmetic), and the fused C loop in
native_kernels.c runs it several times faster. Without the native kernels it is the plain convolution.
Except in bf16 on a CPU with AMX, where oneDNN's tile kernels win (8.1 against 33.4 ms for 64 inputs at
512 px, 2.8 against 10.5 ms for a 16-input student's; fp32 stays with the C loop: 23.5 against 76 ms).
"""

from __future__ import annotations

import torch
from torch import nn

from ...models.networks import ResnetGenerator

OUTPUTS = (1, 3)  # the output channel counts native_kernels.c is built for (grey and colour)


def replaceable(conv: nn.Module) -> bool:
    """An unpadded, stride-1, dense `nn.Conv2d` with 1 or 3 outputs: what the C loop computes."""
    return isinstance(conv, nn.Conv2d) and conv.out_channels in OUTPUTS and conv.stride == (1, 1) \
        and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1


class NarrowConv(nn.Module):
    """A drop-in for a `replaceable` convolution, at inference."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not replaceable(conv):
            raise ValueError("NarrowConv replaces only unpadded stride-1 convolutions with 1 or 3 outputs")
        self.conv = conv
        # [kh * kw * out, in] fp32: the C loop reads one output's weights for a tap as a run of channels
        # (2-D, so a model-wide .to(memory_format=channels_last) leaves it alone).
        w = conv.weight.detach().permute(2, 3, 0, 1).float()
        self.register_buffer("w", w.reshape(-1, w.shape[3]).contiguous(), persistent=False)
        self.register_buffer("b", None if conv.bias is None else conv.bias.detach().float().contiguous(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = self._native(x)
        if lib is None:
            return self.conv(x)
        x = x.to(self.conv.weight.dtype).contiguous(memory_format=torch.channels_last)
        n, c, hp, wp = x.shape
        o, kh, kw = self.conv.out_channels, *self.conv.kernel_size
        out = torch.empty((n, o, hp - kh + 1, wp - kw + 1), dtype=x.dtype, memory_format=torch.channels_last)
        sn, _, sh, sw = x.stride()
        on, oc, oh, ow = out.stride()
        suffix = "f32" if x.dtype == torch.float32 else "bf16"
        getattr(lib, f"narrow_conv{o}_{suffix}")(
            x.data_ptr(), out.data_ptr(), self.w.data_ptr(), 0 if self.b is None else self.b.data_ptr(),
            n, out.shape[2], out.shape[3], c, kh, kw, sn, sh, sw, on, oh, ow, oc, torch.get_num_threads())
        return out

    def _native(self, x: torch.Tensor):
        if x.device.type != "cpu" or x.shape[1] % 16 or self.conv.weight.dtype not in (torch.float32, torch.bfloat16):
            return None
        if self.conv.weight.dtype == torch.bfloat16 and amx_bf16():
            return None  # AMX tiles run oneDNN's bf16 conv 3.8-4x faster than the C loop (16-64 inputs, measured)
        from .native import kernels

        return kernels()


def amx_bf16() -> bool:
    from ..device import cpu_flags

    return "amx_bf16" in cpu_flags().split()


def use_narrow_conv(model: ResnetGenerator) -> ResnetGenerator:
    """Swap the generator's last convolution for a NarrowConv, in place (same index, so tiling and hooks
    see the structure they expect). Other generators, and other last layers, come back unchanged."""
    if not isinstance(model, ResnetGenerator):
        return model
    layers = model.model
    i = max((i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)), default=None)
    if i is not None and replaceable(layers[i]):
        layers[i] = NarrowConv(layers[i])
    return model

