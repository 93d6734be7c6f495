"""Winograd convolution for the residual trunk's 3x3 convolutions (CPU inference).

Why: on CPU the trunk's 3x3 convolutions are 75-85% of a forward pass and oneDNN already runs them
about as fast as its own matmuls, so only fewer multiplications can make them much faster. Winograd F(m, 3)
computes an m x m output tile from an (m+2) x (m+2) input tile with (m+2)^2 multiplies per channel
pair instead of 9 m^2 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
The per-position products become one batched matmul over channels; the tile transforms are small
matmuls with a fixed matrix.

Activations run channels_last (NHWC in memory): tiles are gathered with channels innermost and the
matmul reads them without a transpose. The transforms run in C where a compiler is at hand (native.py):
one pass gathers and transforms, one transforms and places, and a whole residual block (padding,
InstanceNorm, ReLU, the residual sum) folds into those passes (WinogradResnetBlock). Otherwise they are
torch ops: a strided gather and a Kronecker matmul.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...models.networks import InstanceNorm, ResnetBlock, ResnetGenerator

# Transformed input tiles per band, measured on whole passes at 256 and 1024 px. bf16 (oneDNN's batched
# matmul; 1, 2, 4, 8, 16 MB: 194, 181, 188, 207, 200 ms at 256 px, 3.96, 3.41, 3.45, 3.73, 4.59 s at
# 1024): past 2 MB the band's tiles leave the cache. fp32 (MKL's, held to AVX2; 2, 4, 8, 16, 32 MB: 363,
# 306, 310, 294, 292 ms and 7.5, 8.8, 6.2, 5.8, 5.3 s; the same order with AVX-512): a 2 MB band of F(4,3)
# tiles is 48 matrix rows at 256 px, too few for its kernels to run at speed.
BAND_BYTES = 2 << 20
FP32_BAND_BYTES = 32 << 20

# Transform matrices (B^T, G, A^T) for interpolation points 0, +-1 (F2) and 0, +-1, +-2 (F4).
_SPECS = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


class WinogradConv3x3(nn.Module):
    """A drop-in for `nn.Conv2d(C, K, 3)` (stride 1, no padding, no dilation or groups) at inference.

    Takes the already-padded input in any memory format and returns a channels_last tensor.
    """

    def __init__(self, conv: nn.Conv2d, m: int):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (0, 0) \
                or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError("WinogradConv3x3 replaces only plain 3x3, stride-1, unpadded convolutions")
        bt, g, at = (torch.tensor(t, dtype=torch.float64) for t in _SPECS[m])
        dtype = conv.weight.dtype  # the products run in the weights' precision
        self.m, self.a = m, m + 2
        w = conv.weight.detach().double()  # [K, C, 3, 3]
        u = torch.einsum("ij,kcjl,ml->imck", g, w, g)  # G w G^T per channel pair, [a, a, C, K]
        self.register_buffer("u", u.reshape(self.a * self.a, w.shape[1], w.shape[0]).to(dtype).contiguous())
        # Row-major vec(B^T d B) = (B^T kron B^T) vec(d): one matmul transforms every tile at once.
        self.register_buffer("bt", torch.kron(bt, bt).to(dtype))
        self.register_buffer("at", torch.kron(at, at).to(dtype))
        # A^T e1 is all ones, so a bias added to the products at tile position (1, 1) lands on
        # every output pixel: 1/a^2 of the work of adding it to the output.
        self.bias_at = self.a + 1
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(dtype))
        self.bias32 = None if conv.bias is None else conv.bias.detach().float().contiguous()  # for native.py

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hp, wp = x.shape
        h, w, m, a = hp - 2, wp - 2, self.m, self.a
        th, tw = -(-h // m), -(-w // m)
        x = x.to(self.u.dtype).contiguous(memory_format=torch.channels_last)
        k = self.u.shape[2]
        lib = self._native(c, k)
        if lib is None and (th * m != h or tw * m != w):  # whole tiles; the extra rows and columns are cropped
            x = F.pad(x, (0, tw * m - w, 0, th * m - h)).contiguous(memory_format=torch.channels_last)
        out = x.new_empty((n, th * m, tw * m, k))
        rows = _band_rows(x.dtype, th, a * a * n * tw * max(c, k) * x.element_size())  # bands stay in cache
        for r in range(0, th, rows):
            b = min(rows, th - r)
            if lib is not None:
                self._band_native(lib, x, out, r, b)
            else:
                self._band_torch(x, out, r, b)
        out = out.permute(0, 3, 1, 2)  # logical NCHW, channels_last in memory
        if th * m != h or tw * m != w:
            out = out[:, :, :h, :w].contiguous(memory_format=torch.channels_last)
        return out

    def fused(self, lib, x: torch.Tensor, norm: Optional[tuple[torch.Tensor, torch.Tensor]]):
        """For WinogradResnetBlock: this convolution of reflect-padded x (NHWC, unpadded), with `norm`
        (per-image, per-channel scale and shift, then ReLU) applied to x as it is read; no bias (the
        InstanceNorm after it removes any per-channel constant). Returns the output (NCHW view of NHWC
        memory) and its per-image, per-channel sums and sums of squares, float64 [n, 2, K]."""
        n, c, h, w = x.shape
        m, a, k = self.m, self.a, self.u.shape[2]
        th, tw = -(-h // m), -(-w // m)
        suffix = "f32" if x.dtype == torch.float32 else "bf16"
        threads = torch.get_num_threads()
        out = x.new_empty((n, th * m, tw * m, k))
        stats = torch.zeros(threads, n, 2, k, dtype=torch.float64)
        sn, _, sh, sw = x.stride()
        on, oh, ow, _ = out.stride()
        scale, shift = (0, 0) if norm is None else (norm[0].data_ptr(), norm[1].data_ptr())
        rows = _band_rows(x.dtype, th, a * a * n * tw * max(c, k) * x.element_size())
        size = x.element_size()
        for r in range(0, th, rows):
            b = min(rows, th - r)
            v = x.new_empty((a * a, n * b * tw, c))
            getattr(lib, f"winograd_in{m}_{suffix}")(x.data_ptr(), v.data_ptr(), n, b, tw, c, h, w, r * m, sn, sh, sw,
                                                     scale, shift, int(norm is not None), 1, threads)
            prod = torch.bmm(v, self.u)
            getattr(lib, f"winograd_out{m}_{suffix}")(prod.data_ptr(), out.data_ptr() + r * m * oh * size, 0, n, b, tw,
                                                      k, h, w, r * m, on, oh, ow, stats.data_ptr(), threads)
        return out.permute(0, 3, 1, 2)[:, :, :h, :w], stats.sum(0)

    def _native(self, c: int, k: int):
        """The fused C transforms (native.py) where they apply: fp32 or bf16, channels a multiple of 16."""
        if c % 16 or k % 16 or self.u.dtype not in (torch.float32, torch.bfloat16) or self.u.device.type != "cpu":
            return None
        from .native import kernels

        return kernels()

    def _band_native(self, lib, x: torch.Tensor, out: torch.Tensor, r: int, b: int) -> None:
        """Tile rows r..r+b of padded x: the C kernels gather and transform in one pass (rows and columns
        past x, for whole tiles, read as zeros) and transform and place in another."""
        n, c, hp, wp = x.shape
        m, a, k, tw = self.m, self.a, self.u.shape[2], out.shape[2] // self.m
        sn, _, sh, sw = x.stride()
        suffix = "f32" if x.dtype == torch.float32 else "bf16"
        threads = torch.get_num_threads()
        v = x.new_empty((a * a, n * b * tw, c))
        getattr(lib, f"winograd_in{m}_{suffix}")(x.data_ptr(), v.data_ptr(), n, b, tw, c, hp, wp, r * m, sn, sh, sw,
                                                 0, 0, 0, 0, threads)
        prod = torch.bmm(v, self.u)  # [a*a, tiles, K]
        on, oh, ow, _ = out.stride()
        bias = 0 if self.bias32 is None else self.bias32.data_ptr()
        getattr(lib, f"winograd_out{m}_{suffix}")(prod.data_ptr(), out.data_ptr() + r * m * oh * x.element_size(), bias,
                                                  n, b, tw, k, out.shape[1], out.shape[2], r * m, on, oh, ow, 0, threads)

    def _band_torch(self, x: torch.Tensor, out: torch.Tensor, r: int, b: int) -> None:
        """Tile rows r..r+b with torch ops: gather by a strided view, transform by a Kronecker matmul."""
        n, c, _, _ = x.shape
        m, a, k, tw = self.m, self.a, self.u.shape[2], out.shape[2] // self.m
        sn, sc, sh, sw = x.stride()
        tiles = x.as_strided((a, a, n, b, tw, c), (sh, sw, sn, m * sh, m * sw, sc),
                             x.storage_offset() + r * m * sh)
        v = (self.bt @ tiles.reshape(a * a, -1)).view(a * a, n * b * tw, c)
        prod = torch.bmm(v, self.u)  # [a*a, tiles, K]
        if self.bias is not None:
            prod[self.bias_at] += self.bias
        y = (self.at @ prod.view(a * a, -1)).view(m, m, n, b, tw, k)
        out[:, r * m:(r + b) * m].view(n, b, m, tw, m, k).copy_(y.permute(2, 3, 0, 4, 1, 5))


def _band_rows(dtype: torch.dtype, tile_rows: int, bytes_per_row: int) -> int:
    band = FP32_BAND_BYTES if dtype == torch.float32 else BAND_BYTES
    return max(1, min(tile_rows, band // bytes_per_row))


class WinogradResnetBlock(ResnetBlock):
    """A residual block whose convolutions are WinogradConv3x3: with the native kernels, the whole block
    (pad, conv, norm, ReLU, pad, conv, norm, add) runs as two fused transform pairs around the two batched
    matmuls and one final pass, instead of about ten passes over the activation. Without them, or with
    InstanceNorm statistics from outside (tiles, shared video statistics), the layers run one by one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = self._fusable(x)
        if lib is None:
            return super().forward(x)
        pad1, conv1, norm1, relu, pad2, conv2, norm2 = self._layers()
        n, c, h, w = x.shape
        x = x.to(conv1.u.dtype).contiguous(memory_format=torch.channels_last)
        y1, s1 = conv1.fused(lib, x, None)
        y2, s2 = conv2.fused(lib, y1, norm_scale_shift(norm1, s1, h * w))
        scale, shift = norm_scale_shift(norm2, s2, h * w)
        out = torch.empty_like(x, memory_format=torch.channels_last)
        strides = [torch.tensor([t.stride(0), t.stride(2), t.stride(3)], dtype=torch.long) for t in (x, y2, out)]
        getattr(lib, f"norm_add_{'f32' if x.dtype == torch.float32 else 'bf16'}")(
            x.data_ptr(), y2.data_ptr(), out.data_ptr(), scale.data_ptr(), shift.data_ptr(), n, h, w, c,
            *(s.data_ptr() for s in strides), torch.get_num_threads())
        return out

    def _layers(self) -> list[nn.Module]:
        return [m for m in self.conv_block if not isinstance(m, nn.Dropout)]  # dropout: identity at inference

    def _fusable(self, x: torch.Tensor):
        layers = self._layers()
        kinds = (nn.ReflectionPad2d, WinogradConv3x3, InstanceNorm, nn.ReLU, nn.ReflectionPad2d, WinogradConv3x3,
                 InstanceNorm)
        if len(layers) != len(kinds) or not all(isinstance(m, k) for m, k in zip(layers, kinds)):
            return None
        pad1, conv1, norm1, _, pad2, conv2, norm2 = layers
        if any(p.padding != (1, 1, 1, 1) for p in (pad1, pad2)) or norm1.stats_hook or norm2.stats_hook \
                or x.device.type != "cpu" or x.dim() != 4 or min(x.shape[2:]) < 2 or torch.is_grad_enabled():
            return None
        c = x.shape[1]
        return conv1._native(c, c) if conv2._native(c, c) is not None else None


def norm_scale_shift(norm: InstanceNorm, sums: torch.Tensor, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """InstanceNorm (and its affine) as a per-image, per-channel scale and shift, fp32 [n, C], from float64
    sums and sums of squares."""
    mean = sums[:, 0] / pixels
    scale, shift = norm.scale_shift(mean, (sums[:, 1] / pixels - mean * mean).clamp_min(0))
    return scale.float().contiguous(), shift.float().contiguous()


def use_winograd(model: ResnetGenerator, m: int) -> ResnetGenerator:
    """Swap the 3x3 convolutions of every residual block for Winograd F(m, 3) ones, in place.

    Layer indices stay the same, so tiling and statistics hooks see the structure they expect; the
    state_dict does not (the buffers hold transformed weights), so do this to an inference copy only.
    Other generators (a U-Net has no residual trunk) come back unchanged.
    """
    if not isinstance(model, ResnetGenerator):
        return model
    for block in model.model:
        if isinstance(block, ResnetBlock):
            layers = block.conv_block
            for i, layer in enumerate(layers):
                if isinstance(layer, nn.Conv2d):
                    layers[i] = WinogradConv3x3(layer, m)
            block.__class__ = WinogradResnetBlock  # same state and layers; only forward differs
    return model
