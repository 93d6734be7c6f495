"""The student `distill` trains: its size (the presets people choose) and its start (the teacher's own weights).

A student is a plain ResNet generator, narrower and shallower than its teacher, so that the engine (Winograd,
native kernels, tiling with exact statistics), video and every export path run it unchanged. Its InstanceNorms
are affine: the per-channel scale and shift are nearly free and let a narrow network re-weigh what it keeps.

From a ResNet teacher the student starts as the teacher cut down (network slimming): each layer keeps the
teacher's most important output channels (by the norm's scale, else the filter's L1 norm), the trunk keeps the
channels that matter across the kept blocks, and the blocks kept are those whose removal changes the output
most. Each convolution is then re-fitted by least squares to reproduce the teacher's output on the kept channels
from what the student's earlier layers actually produce (layer-wise reconstruction, as channel pruning does).
Any other teacher (U-Net, BatchNorm) gives a student from PyTorch's default initialisation: the student mimics
outputs, not layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CycleBatchError
from ..models.cost import macs, parameters
from ..models.networks import Generator, GeneratorConfig, InstanceNorm, ResnetBlock, ResnetGenerator


@dataclass(frozen=True)
class Size:
    name: str
    limit: int  # at most 1/limit of the teacher's multiply-accumulates and parameters
    width: float  # of the teacher's ngf, for a ResNet teacher (then narrowed until the limit holds)
    blocks: int


# small: wide and shallow (ngf 32, 1 block from the 64 x 9 teacher), not narrow and deep (ngf 16, 5 blocks, the
# preset until 2026-12-07). Measured (bf16, 2 cores, benchmarks/bench_student_sizes.py): +1.4 dB at 1000 iterations
# and faster on a Xeon with AMX (6.8-7.8x the teacher's engine speed against 6.1-6.5x), where a deep narrow net is
# bound by per-layer overheads; 8.4x against 11.1x on an AVX-512 EPYC without AMX, where speed follows MACs.
SIZES = {"small": Size("small", 10, 1 / 2, 1), "tiny": Size("tiny", 25, 1 / 4, 4)}
PROBE = 256  # px: the image size MACs are compared at (the ratio hardly moves with size)


def custom_size(size: str) -> Optional[tuple[int, int]]:
    """(ngf, blocks) of a size given as NGFxBLOCKS ("24x6"), else None: a student of exactly that shape, for a
    trade-off of fidelity against speed the presets do not make (benchmarks/bench_student_sizes.py measures it)."""
    ngf, x, blocks = size.partition("x")
    if x and ngf.isdigit() and blocks.isdigit() and int(ngf) >= 2 and int(blocks) >= 1:
        return int(ngf), int(blocks)
    return None


def student_config(teacher: Generator, size: str, cost: Optional[tuple[int, int]] = None) -> GeneratorConfig:
    """The student for `size`: the preset's width and depth, narrowed (ngf in steps of 2) until its MACs and
    parameters are both within the preset's fraction of the teacher's (`cost`: the teacher's (MACs at PROBE px,
    parameters), when the caller has them already); or exactly NGFxBLOCKS."""
    tc = teacher.config
    shape = custom_size(size)
    if shape:
        ngf, blocks = shape
        return GeneratorConfig(in_channels=tc.in_channels, out_channels=tc.out_channels, ngf=ngf, n_blocks=blocks,
                               affine_norm=True)
    if size not in SIZES:
        raise CycleBatchError(f"unknown student size '{size}' (use {' or '.join(SIZES)}, or NGFxBLOCKS such as 24x6)")
    s = SIZES[size]
    t_macs, t_params = cost or (macs(teacher, PROBE, PROBE), parameters(teacher))
    blocks = min(s.blocks, tc.n_blocks) if tc.family == "resnet" else s.blocks
    widest = max(4, round(tc.ngf * s.width / 2) * 2)
    for depth in range(blocks, 0, -1):  # narrower first, then shallower: width costs quadratically
        for ngf in range(widest, 3, -2):
            cfg = GeneratorConfig(in_channels=tc.in_channels, out_channels=tc.out_channels, ngf=ngf, n_blocks=depth,
                                  affine_norm=True)
            net = ResnetGenerator(cfg)
            if macs(net, PROBE, PROBE) * s.limit <= t_macs and parameters(net) * s.limit <= t_params:
                return cfg
    raise CycleBatchError(f"this teacher ({tc.describe()}) is already too small for a '{size}' student "
                          f"(1/{s.limit} of its cost)")


def student_from(teacher: Generator, cfg: GeneratorConfig, calibration: Optional[torch.Tensor] = None,
                 log: Callable[[str], None] = lambda msg: None) -> ResnetGenerator:
    """A trainable student: the teacher cut down and re-fitted (a ResNet teacher with `calibration` crops,
    N x C x H x W in [-1, 1]), or freshly initialised (any other teacher, or a student wider or deeper than it)."""
    torch.manual_seed(0)
    student = ResnetGenerator(cfg)
    tc = teacher.config
    if isinstance(teacher, ResnetGenerator) and tc.norm == "instance" and not tc.dropout \
            and cfg.ngf <= tc.ngf and cfg.n_blocks <= tc.n_blocks:
        teacher = teacher.float().eval()
        pairs = _slim(teacher, student, calibration)
        if calibration is not None:
            _refit(teacher, student, pairs, calibration)
        log(f"student started from the teacher's weights ({len(pairs)} layers, {student.config.n_blocks} of "
            f"{teacher.config.n_blocks} blocks)")
    return student.train()


# ---------------------------------------------------------------- slimming

def _importance(norm: nn.Module, conv: nn.Module) -> torch.Tensor:
    if getattr(norm, "weight", None) is not None:
        return norm.weight.detach().abs()
    w = conv.weight.detach().abs()
    return w.sum(dim=(1, 2, 3)) if isinstance(conv, nn.Conv2d) else w.sum(dim=(0, 2, 3))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, k).indices).values


@torch.no_grad()
def _kept_blocks(teacher: ResnetGenerator, n: int, x: Optional[torch.Tensor]) -> list[int]:
    """Indices (into the teacher's blocks) of the n whose removal changes the output most; evenly spread
    without calibration images."""
    blocks = [i for i, m in enumerate(teacher.model) if isinstance(m, ResnetBlock)]
    if n >= len(blocks):
        return list(range(len(blocks)))
    if x is None:
        return sorted({round(j * (len(blocks) - 1) / max(1, n - 1)) for j in range(n)})
    x = x[:4]
    ref = teacher(x)
    change = []
    for i in blocks:
        keep = teacher.model[i]
        teacher.model[i] = nn.Identity()
        try:
            change.append(float(((teacher(x) - ref) ** 2).mean()))
        finally:
            teacher.model[i] = keep
    return sorted(sorted(range(len(blocks)), key=lambda j: -change[j])[:n])


def _copy_conv(dst: nn.Module, src: nn.Module, out_sel: torch.Tensor, in_sel: torch.Tensor) -> None:
    w = src.weight.detach()
    w = w[in_sel][:, out_sel] if isinstance(src, nn.ConvTranspose2d) else w[out_sel][:, in_sel]
    dst.weight.copy_(w)
    if dst.bias is not None:
        if src.bias is not None:
            dst.bias.copy_(src.bias.detach()[out_sel])
        else:
            dst.bias.zero_()


def _copy_norm(dst: nn.Module, src: nn.Module, sel: torch.Tensor) -> None:
    if getattr(src, "weight", None) is not None:
        dst.weight.copy_(src.weight.detach()[sel])
        dst.bias.copy_(src.bias.detach()[sel])
    else:
        dst.weight.fill_(1)
        dst.bias.zero_()


@torch.no_grad()
def _slim(teacher: ResnetGenerator, student: ResnetGenerator, x: Optional[torch.Tensor]) -> list[tuple]:
    """Copy the teacher's most important channels into the student; returns (student conv, teacher conv,
    the teacher's output channels it stands for) in forward order."""
    t_layers = list(teacher.model)
    t_blocks = [m for m in t_layers if isinstance(m, ResnetBlock)]
    kept = [t_blocks[j] for j in _kept_blocks(teacher, student.config.n_blocks, x)]
    t_layers = [m for m in t_layers if not isinstance(m, ResnetBlock) or m in kept]
    s_layers = list(student.model)
    trunk_width = student.config.ngf * 4
    first_block = next(i for i, m in enumerate(t_layers) if isinstance(m, ResnetBlock))
    # the residual stream's channels: what the stem's last norm and every kept block's last norm weigh most
    scores = _importance(t_layers[first_block - 2], t_layers[first_block - 3]).clone()
    for block in kept:
        convs = [m for m in block.conv_block if isinstance(m, nn.Conv2d)]
        scores += _importance(block.conv_block[list(block.conv_block).index(convs[1]) + 1], convs[1])
    trunk = _top(scores, trunk_width)

    pairs, current = [], torch.arange(student.config.in_channels)
    for i, (t, s) in enumerate(zip(t_layers, s_layers)):
        if isinstance(s, ResnetBlock):
            t_seq = [m for m in t.conv_block if not isinstance(m, nn.Dropout)]
            (c1, n1), (c2, n2) = [(a, t_seq[k + 1]) for k, a in enumerate(t_seq) if isinstance(a, nn.Conv2d)]
            s_convs = [(k, a) for k, a in enumerate(s.conv_block) if isinstance(a, nn.Conv2d)]
            inner = _top(_importance(n1, c1), trunk_width)
            for (k, sc), tc, tn, out_sel, in_sel in ((s_convs[0], c1, n1, inner, trunk),
                                                      (s_convs[1], c2, n2, trunk, inner)):
                _copy_conv(sc, tc, out_sel, in_sel)
                _copy_norm(s.conv_block[k + 1], tn, out_sel)
                pairs.append((sc, tc, out_sel))
        elif isinstance(s, (nn.Conv2d, nn.ConvTranspose2d)):
            norm = s_layers[i + 1] if i + 1 < len(s_layers) else None
            if isinstance(norm, InstanceNorm):
                out_sel = trunk if i == first_block - 3 else _top(_importance(t_layers[i + 1], t), s.out_channels)
                _copy_norm(norm, t_layers[i + 1], out_sel)
            else:  # the output convolution: every channel
                out_sel = torch.arange(s.out_channels)
            _copy_conv(s, t, out_sel, current)
            pairs.append((s, t, out_sel))
            current = out_sel
    return pairs


# ---------------------------------------------------------------- least-squares re-fit

def _patches(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input patches, one row per output value, such that conv(x) = patches @ W.T + b."""
    k = conv.kernel_size[0]
    if isinstance(conv, nn.ConvTranspose2d):  # a stride-s transposed conv = a conv over the zero-spread input
        s, p, op = conv.stride[0], conv.padding[0], conv.output_padding[0]
        n, c, h, w = x.shape
        spread = x.new_zeros(n, c, (h - 1) * s + 1, (w - 1) * s + 1)
        spread[:, :, ::s, ::s] = x
        x = F.pad(spread, (k - 1 - p, k - 1 - p + op, k - 1 - p, k - 1 - p + op))
        return F.unfold(x, k).transpose(1, 2).reshape(-1, c * k * k)
    u = F.unfold(x, k, padding=conv.padding[0], stride=conv.stride[0])
    return u.transpose(1, 2).reshape(-1, x.shape[1] * k * k)


def _set_weights(conv: nn.Module, w: torch.Tensor, b: torch.Tensor) -> None:
    k = conv.kernel_size[0]
    if isinstance(conv, nn.ConvTranspose2d):
        conv.weight.copy_(w.reshape(conv.out_channels, conv.in_channels, k, k).flip(2, 3).transpose(0, 1))
    else:
        conv.weight.copy_(w.reshape(conv.weight.shape))
    if conv.bias is not None:
        conv.bias.copy_(b)


@torch.no_grad()
def _refit(teacher: ResnetGenerator, student: ResnetGenerator, pairs: list[tuple], x: torch.Tensor,
           samples: int = 40_000, ridge: float = 1e-3) -> None:
    """Layer by layer, in forward order: the student conv's weights that best reproduce the teacher conv's
    output (before its norm) on the kept channels, from the student's own input to that layer."""
    targets: dict[int, torch.Tensor] = {}
    hooks = [t.register_forward_hook(lambda m, i, o, key=id(t): targets.__setitem__(key, o)) for _, t, _ in pairs]
    try:
        teacher(x)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(0)
    for s, t, out_sel in pairs:
        seen: dict = {}
        hook = s.register_forward_pre_hook(lambda m, i: seen.__setitem__("x", i[0]))
        try:
            student(x)
        finally:
            hook.remove()
        a = _patches(s, seen["x"])
        y = targets[id(t)][:, out_sel].permute(0, 2, 3, 1).reshape(-1, len(out_sel))
        pick = torch.randint(0, a.shape[0], (min(samples, a.shape[0]),), generator=g)
        a1 = torch.cat([a[pick], torch.ones(len(pick), 1)], 1).double()
        gram = a1.T @ a1
        gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        w = torch.linalg.solve(gram, a1.T @ y[pick].double()).T.float()
        _set_weights(s, w[:, :-1], w[:, -1])
