"""InstanceNorm + ReLU outside the residual blocks as one native pass pair, at inference on CPU.

Why: torch spends a statistics-and-normalise pass and a separate ReLU pass on each of these pairs, and at
full resolution they are memory-bound: 4.0 ms of a small distilled student's 40 ms at 384x512 (bf16,
2-core Xeon) went to the first pair alone, whose convolution took 2.5. Here a C loop sums each channel
(fp32 runs of 256 pixels added up in float64) and a second writes max(x * scale + shift, 0).

The swap keeps the layer indices: the norm becomes a NormReLU (the same module and parameters, its forward
applies the ReLU too) and the ReLU after it an nn.Identity, so tiling and the statistics hooks of tiles and
video see the structure they expect; with a hook installed the statistics come from it, as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...models.networks import InstanceNorm, ResnetGenerator
from .winograd import norm_scale_shift


class NormReLU(InstanceNorm):
    """relu(InstanceNorm(x)); the class a swapped InstanceNorm takes (see use_norm_relu)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = self._native(x)
        if lib is None:
            return F.relu(super().forward(x))
        n, c, h, w = x.shape
        suffix = "f32" if x.dtype == torch.float32 else "bf16"
        if self.stats_hook is not None:
            mean, var = self.stats_hook(self, x)
            mean, var = mean.float().reshape(-1, c).expand(n, c), var.float().reshape(-1, c).expand(n, c)
            scale, shift = (t.float().contiguous() for t in self.scale_shift(mean, var))
        else:
            sums = torch.zeros(n, 2, c, dtype=torch.float64)
            getattr(lib, f"channel_sums_{suffix}")(x.data_ptr(), sums.data_ptr(), n, h * w, c,
                                                    torch.get_num_threads())
            scale, shift = norm_scale_shift(self, sums, h * w)
        out = torch.empty_like(x, memory_format=torch.channels_last)
        getattr(lib, f"norm_relu_{suffix}")(x.data_ptr(), out.data_ptr(), scale.data_ptr(), shift.data_ptr(), n,
                                            h * w, c, torch.get_num_threads())
        return out

    def _native(self, x: torch.Tensor):
        if x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.bfloat16) \
                or x.shape[1] % 16 or x.shape[2] * x.shape[3] < 2 or torch.is_grad_enabled() \
                or not x.is_contiguous(memory_format=torch.channels_last):
            return None
        from .native import kernels

        return kernels()


def use_norm_relu(model: ResnetGenerator) -> ResnetGenerator:
    """Swap each top-level InstanceNorm that a ReLU follows for a NormReLU and that ReLU for an Identity, in
    place. The residual blocks (fused by winograd.py) and other generators are left as they are."""
    if not isinstance(model, ResnetGenerator):
        return model
    layers = model.model
    for i in range(len(layers) - 1):
        if type(layers[i]) is InstanceNorm and isinstance(layers[i + 1], nn.ReLU):
            layers[i].__class__ = NormReLU
            layers[i + 1] = nn.Identity()
    return model
