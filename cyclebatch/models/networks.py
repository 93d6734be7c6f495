"""CycleGAN networks whose state_dict keys and shapes equal the official ones.

Official = junyanz/pytorch-CycleGAN-and-pix2pix: the generators it trains (`--netG` resnet_6blocks,
resnet_9blocks, unet_128, unet_256 with `--norm` instance, batch or none) and the 70x70
`NLayerDiscriminator` with InstanceNorm. Keeping the layer indices identical (parameterless layers
included) is what lets every official checkpoint load without renaming.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import CycleBatchError

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
        scale, shift = self.scale_shift(mean.float(), var.float())
        return torch.addcmul(shift, x, scale).to(x.dtype)

    def scale_shift(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This norm (affine included) as `x * scale + shift`, from per-image statistics [N, C, ...], in
        their dtype and shape."""
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            shape = (1, -1) + (1,) * (mean.dim() - 2)
            w, b = self.weight.to(mean.dtype).view(shape), self.bias.to(mean.dtype).view(shape)
            scale, shift = scale * w, shift * w + b
        return scale, shift

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
    # Compiled graphs drop batch_norm_update_stats' writes into its buffers (outputs 127 levels off): var_mean.
    if not (_nhwc_on_cpu(x) and h * w > 1) or torch.compiler.is_compiling():
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


NORMS = ("instance", "batch", "none")
BATCHNORM_MODES = ("running", "per-image")


@dataclass(frozen=True)
class GeneratorConfig:
    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    n_blocks: int = 9  # ResNet: residual blocks
    dropout: bool = False
    affine_norm: bool = False
    family: str = "resnet"  # "resnet" or "unet"
    norm: str = "instance"  # "instance", "batch" or "none"
    n_downs: int = 8  # U-Net: stride-2 downsamplings (7: unet_128, 8: unet_256)
    bias: Optional[bool] = None  # convs before a norm have a bias; None: as the official code (only with instance)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def name(self) -> str:
        return f"unet_{2 ** self.n_downs}" if self.family == "unet" else f"resnet_{self.n_blocks}blocks"

    @property
    def conv_bias(self) -> bool:
        return self.norm == "instance" if self.bias is None else self.bias

    @property
    def size_multiple(self) -> int:
        """Input H and W must be multiples of this: every stride-2 stage halves them exactly."""
        return 2 ** self.n_downs if self.family == "unet" else 4

    @property
    def min_side(self) -> int:
        """Smallest H and W a pass takes: the first 7x7 conv's reflect pad of 3 needs a side over 3 (5, padded
        to 8, leaves the 1/4-resolution trunk 2 px), and a U-Net's pad to its multiple must be shorter than
        the side."""
        return max(5, self.size_multiple // 2 + 1)

    def describe(self) -> str:
        """One line for people: `models info`, export metadata."""
        depth = (f"{self.n_downs} downsamplings" if self.family == "unet" else f"{self.n_blocks} residual blocks")
        norm = {"instance": f"{'affine' if self.affine_norm else 'plain'} InstanceNorm", "batch": "BatchNorm",
                "none": "no normalisation"}[self.norm]
        # A U-Net's dropout layers have no weights, so a checkpoint cannot tell; inference never uses it.
        drop = "" if self.family == "unet" else f", {'dropout' if self.dropout else 'no dropout'}"
        return (f"{self.name}, ngf {self.ngf}, {self.in_channels}->{self.out_channels} channels, {norm}{drop}, "
                f"{depth}")


def norm_layer(config: GeneratorConfig, channels: int) -> nn.Module:
    """The norm at an official norm position; `none` keeps the position (nn.Identity) so indices stay put."""
    if config.norm == "instance":
        return InstanceNorm(channels, config.affine_norm)
    if config.norm == "batch":
        return nn.BatchNorm2d(channels, affine=config.affine_norm)
    if config.norm == "none":
        return nn.Identity()
    raise CycleBatchError(f"unknown norm '{config.norm}' (use {', '.join(NORMS)})")


class Generator(nn.Module):
    """What every generator offers the engine, tiler, video and export code."""

    config: GeneratorConfig
    tileable = False  # tiles equal the full frame (tiling.py): only where the receptive field is bounded

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.metadata: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def norms(self) -> list[InstanceNorm]:
        """The InstanceNorms, whose statistics tiling and video can supply (BatchNorm uses its own)."""
        return [m for m in self.modules() if isinstance(m, InstanceNorm)]

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    @property
    def min_side(self) -> int:
        return self.config.min_side


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, config: GeneratorConfig):
        super().__init__()
        bias = config.conv_bias
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(config, dim), nn.ReLU(True)
        ]
        if config.dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_layer(config, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + x  # the same sum; the result takes the block's memory format


class ResnetGenerator(Generator):
    """c7s1-ngf, d2ngf, d4ngf, n x R4ngf, u2ngf, ungf, c7s1-out, tanh. Input H and W: multiples of 4."""

    tileable = True

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__(config)
        if config.family != "resnet":
            raise CycleBatchError(f"ResnetGenerator cannot build a {config.name} (use make_generator)")
        c, ngf, bias = config, config.ngf, config.conv_bias
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(c.in_channels, ngf, 7, bias=bias), norm_layer(c, ngf), nn.ReLU(True)
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                norm_layer(c, ngf * mult * 2), nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4, c) for _ in range(c.n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                norm_layer(c, ngf * mult // 2), nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, c.out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    @property
    def receptive_radius(self) -> int:
        """Input pixels on each side that can change an output pixel: 8 * blocks + 12 (measured by
        gradients); tiles without shared statistics read this much context to equal the full frame."""
        return 8 * self.config.n_blocks + 16


class UnetBlock(nn.Module):
    """One U-Net level: down (4x4 stride-2 conv), the levels inside, up (4x4 stride-2 transposed conv).

    Indices as official: outermost [down, inner, ReLU, up, Tanh]; innermost [LeakyReLU, down, ReLU, up,
    norm]; between [LeakyReLU, down, norm, inner, ReLU, up, norm, (Dropout)]. All but the outermost return
    their input concatenated with their output.
    """

    def __init__(self, outer: int, inner: int, config: GeneratorConfig, sub: Optional["UnetBlock"] = None,
                 in_channels: Optional[int] = None, outermost: bool = False, dropout: bool = False):
        super().__init__()
        c, bias = config, config.conv_bias
        down = nn.Conv2d(in_channels or outer, inner, 4, stride=2, padding=1, bias=bias)
        if outermost:
            layers = [down, sub, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif sub is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(),
                      nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=bias), norm_layer(c, outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, norm_layer(c, inner), sub, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=bias), norm_layer(c, outer)]
            layers += [nn.Dropout(0.5)] if dropout else []
        self.outermost = outermost
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official in-place LeakyReLU also rewrites the skip half of the concatenation; the ReLU that
        # the enclosing level applies next gives the same result either way, so no copy of that is needed.
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(Generator):
    """Official unet_128 / unet_256: n_downs nested levels (ngf, 2, 4, then 8 x ngf channels), skips
    concatenated. Input H and W: multiples of 2 ** n_downs. Every output pixel sees the whole image."""

    def __init__(self, config: GeneratorConfig):
        super().__init__(config)
        c, ngf = config, config.ngf
        if c.family != "unet" or c.n_downs < 5:
            raise CycleBatchError(f"a U-Net needs at least 5 downsamplings, not {c.n_downs}")
        block = UnetBlock(ngf * 8, ngf * 8, c)
        for _ in range(c.n_downs - 5):
            block = UnetBlock(ngf * 8, ngf * 8, c, block, dropout=c.dropout)
        for mult in (4, 2, 1):
            block = UnetBlock(ngf * mult, ngf * mult * 2, c, block)
        self.model = UnetBlock(c.out_channels, ngf, c, block, in_channels=c.in_channels, outermost=True)


def make_generator(config: GeneratorConfig) -> Generator:
    return UnetGenerator(config) if config.family == "unet" else ResnetGenerator(config)


def with_batchnorm_mode(model: Generator, mode: str = "running") -> Generator:
    """BatchNorm at inference: "running" statistics (official test.py --eval), or "per-image" (official
    test.py default: train mode at batch size 1 normalises each image by its own statistics).

    Per-image BatchNorm is exactly an affine InstanceNorm with the BatchNorm's weight, bias and eps, so
    "per-image" returns a copy with each BatchNorm swapped for one; tiling and video then treat them as
    any InstanceNorm. Models without BatchNorm come back unchanged.
    """
    if mode not in BATCHNORM_MODES:
        raise CycleBatchError(f"unknown BatchNorm mode '{mode}' (use {' or '.join(BATCHNORM_MODES)})")
    if mode == "running" or not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                norm = InstanceNorm(child.num_features, child.affine).to(child.running_mean.device)
                norm.eps = child.eps
                if child.affine:
                    norm.load_state_dict({"weight": child.weight, "bias": child.bias})
                setattr(parent, name, norm)
    return model


def full_frame_only(config: GeneratorConfig, why: str) -> CycleBatchError:
    """The error for tiling a generator whose receptive field is the whole image (a U-Net)."""
    return CycleBatchError(f"{config.name} is a U-Net: every output pixel depends on the whole image, so it "
                           f"runs full frame only and cannot be tiled ({why}); lower the working resolution "
                           f"(run --max-size or --scale) or raise --max-memory")


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
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) and m.affine:
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
