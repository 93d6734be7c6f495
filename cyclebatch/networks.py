"""CycleGAN networks whose state_dict keys and shapes equal the official ones.

Official = junyanz/pytorch-CycleGAN-and-pix2pix: `ResnetGenerator` (resnet_6blocks /
resnet_9blocks) and the 70x70 `NLayerDiscriminator`, both with InstanceNorm. Keeping the
layer indices identical is what lets every official checkpoint load without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn
import torch.nn.functional as F

# A hook that returns (mean, var) for an InstanceNorm input, each broadcastable to [N, C, 1, 1].
# Tiling (whole-image statistics) and video (statistics shared across frames) install one. A hook with a
# `share(norm, mean, var)` method also takes statistics computed elsewhere: the tiler, which installs its
# own hooks over it, passes each whole-frame (mean, var) through it, so shared statistics reach tiles too.
StatsHook = Callable[["InstanceNorm", torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


class InstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm2d (official settings: no running stats) whose statistics can come from outside."""

    def __init__(self, channels: int, affine: bool = False):
        super().__init__(channels, affine=affine, track_running_stats=False)
        self.stats_hook: Optional[StatsHook] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stats_hook is None:
            if not _nhwc_on_cpu(x):
                return super().forward(x)
            if x.dtype == torch.float32:  # fp32 deserves accurate statistics (see STATS_ROWS)
                return self._channels_last_with(x, *instance_stats(x))
            return self._channels_last(x)
        mean, var = self.stats_hook(self, x)
        if _nhwc_on_cpu(x):
            return self._channels_last_with(x, mean, var)
        # One scale and shift computed in fp32 and rounded once to x's dtype, as the fused kernel does;
        # rounding at every step in bf16 costs accuracy (measured closer to fp32 this way than the fused path).
        scale = torch.rsqrt(var.float() + self.eps)
        shift = -mean.float() * scale
        if self.affine:
            w, b = self.weight.float().view(1, -1, 1, 1), self.bias.float().view(1, -1, 1, 1)
            scale, shift = scale * w, shift * w + b
        return torch.addcmul(shift, x, scale).to(x.dtype)

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        # batch_norm in training mode on each image's [H*W, C] view: statistics and output in one fused
        # pass, the fastest way in bf16 (whose rounding dwarfs the error of its plain fp32 sums).
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        out = [F.batch_norm(r, None, None, self.weight, self.bias, True, 0.0, self.eps) for r in rows]
        return _stacked(out).view(n, h, w, c).permute(0, 3, 1, 2)

    def _channels_last_with(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        # Each image's NHWC memory is a [H*W, C] batch for batch_norm in eval mode, with the statistics as
        # its running ones: one pass computed in fp32 and rounded once. instance_norm on channels_last
        # converts to NCHW and back (about 2x slower), and addcmul + cast took 4x as long.
        n, c, h, w = x.shape
        mean, var = (s.float().reshape(-1, c).expand(n, c) for s in (mean, var))
        weight, bias = (self.weight.float(), self.bias.float()) if self.affine else (None, None)
        rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        out = [F.batch_norm(r, mean[i], var[i], weight, bias, False, 0.0, self.eps) for i, r in enumerate(rows)]
        return _stacked(out).view(n, h, w, c).permute(0, 3, 1, 2)


def _stacked(images: list[torch.Tensor]) -> torch.Tensor:
    return images[0].unsqueeze(0) if len(images) == 1 else torch.stack(images)  # one image: no copy


def _nhwc_on_cpu(x: torch.Tensor) -> bool:
    """Inference on channels_last CPU memory: the batch_norm paths (their statistics carry no gradient)."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not (x.requires_grad and torch.is_grad_enabled()))


# Rows per partial sum. batch_norm's statistics are plain fp32 sums, whose error grows with their length:
# over a 512x340 image's 174k rows the variance was off by 3e-5 (4e-3 levels at an fp32 output, 25x
# the NCHW kernel's error); in parts of 4096 merged in float64 it is off by 3e-7, and faster too (2.6 vs
# 18 ms there: short sums stay in cache).
STATS_ROWS = 4096


def instance_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and biased variance, as InstanceNorm computes them, in fp32, [N, C, 1, 1]."""
    n, c, h, w = x.shape
    if not (_nhwc_on_cpu(x) and h * w > 1):
        var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, unbiased=False)
        return mean, var
    # var_mean strides across channels_last memory (8x slower); batch_norm reads each image's [H*W, C]
    # view in one pass and leaves the statistics in fp32 running buffers (momentum 1: unbiased variance).
    rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
    k = -(-h * w // STATS_ROWS)  # equal parts of at least STATS_ROWS / 2 rows: never one of a single row
    means, vars_ = torch.zeros(n, k, c), torch.ones(n, k, c)
    counts = torch.tensor([len(p) for p in torch.tensor_split(rows[0], k)], dtype=torch.float64).view(k, 1)
    for i in range(n):
        for j, part in enumerate(torch.tensor_split(rows[i], k)):
            torch.batch_norm_update_stats(part, means[i, j], vars_[i, j], 1.0)
    # Merge the parts (Chan et al.): mean of means; within-part variance plus the spread of the means.
    m, v = means.double(), vars_.double() * ((counts - 1) / counts)
    mean = (m * counts).sum(1) / (h * w)
    var = ((v + (m - mean.unsqueeze(1)) ** 2) * counts).sum(1) / (h * w)
    return mean.float().view(n, c, 1, 1), var.float().view(n, c, 1, 1)


@dataclass(frozen=True)
class GeneratorConfig:
    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    n_blocks: int = 9
    dropout: bool = False
    affine_norm: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def name(self) -> str:
        return f"resnet_{self.n_blocks}blocks"


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, affine: bool, dropout: bool):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), InstanceNorm(dim, affine), nn.ReLU(True)
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), InstanceNorm(dim, affine)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + x  # the same sum; the result takes the block's memory format


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d2ngf, d4ngf, n x R4ngf, u2ngf, ungf, c7s1-out, tanh. Input H and W: multiples of 4."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        c, ngf, affine = config, config.ngf, config.affine_norm
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(c.in_channels, ngf, 7), InstanceNorm(ngf, affine), nn.ReLU(True)
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                InstanceNorm(ngf * mult * 2, affine), nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4, affine, c.dropout) for _ in range(c.n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                InstanceNorm(ngf * mult // 2, affine), nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, c.out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.config = config
        self.metadata: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def norms(self) -> list[InstanceNorm]:
        return [m for m in self.modules() if isinstance(m, InstanceNorm)]


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN (n_layers=3): strides 2, 2, 2, 1, 1; InstanceNorm after all but the first conv."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1),
                nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The paper's init: conv weights N(0, gain), biases 0; affine norm weights N(1, gain)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


def pad_to_multiple(x: torch.Tensor, multiple: int = 4) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple (the generator's two stride-2 stages need 4)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
