"""Winograd convolution for the residual trunk's 3x3 convolutions (CPU inference).

Why: on CPU the trunk's 3x3 convolutions are 75-85% of a forward pass and oneDNN already runs them
at the cores' bf16 peak, so only fewer multiplications can make them faster. Winograd F(m, 3)
computes an m x m output tile from an (m+2) x (m+2) input tile with (m+2)^2 multiplies per channel
pair instead of 9 m^2 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
The per-position products become one batched matmul over channels; the tile transforms are small
matmuls with a fixed matrix.

Activations run channels_last (NHWC in memory): tiles are gathered with channels innermost and the
matmul reads them without a transpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .networks import ResnetBlock, ResnetGenerator

# Transformed input tiles per band, measured best between 256 and 1024 px images: the torch transforms
# are bound by memory past a few MB; the fused C ones (native.py) touch each value once, and larger
# bands give the batched matmul more rows.
BAND_BYTES = 2 << 20
NATIVE_BAND_BYTES = 8 << 20

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
        if th * m != h or tw * m != w:  # whole tiles only; the extra rows and columns are cropped below
            x = F.pad(x, (0, tw * m - w, 0, th * m - h)).contiguous(memory_format=torch.channels_last)
        k = self.u.shape[2]
        out = x.new_empty((n, th * m, tw * m, k))
        # Bands of tile rows whose transformed tiles stay in cache: the whole of a 1024 px image's ran
        # slower than the direct convolution.
        lib = self._native(c, k)
        band = BAND_BYTES if lib is None else NATIVE_BAND_BYTES
        rows = max(1, min(th, band // (a * a * n * tw * max(c, k) * x.element_size())))
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

    def _native(self, c: int, k: int):
        """The fused C transforms (native.py) where they apply: fp32 or bf16, channels a multiple of 16."""
        if c % 16 or k % 16 or self.u.dtype not in (torch.float32, torch.bfloat16) or self.u.device.type != "cpu":
            return None
        from .native import kernels

        return kernels()

    def _band_native(self, lib, x: torch.Tensor, out: torch.Tensor, r: int, b: int) -> None:
        """Tile rows r..r+b: the C kernels gather and transform in one pass and transform and place in another."""
        n, c, _, _ = x.shape
        m, a, k, tw = self.m, self.a, self.u.shape[2], out.shape[2] // self.m
        sn, _, sh, sw = x.stride()
        suffix = "f32" if x.dtype == torch.float32 else "bf16"
        threads = torch.get_num_threads()
        size = x.element_size()
        v = x.new_empty((a * a, n * b * tw, c))
        getattr(lib, f"winograd_in{m}_{suffix}")(x.data_ptr() + r * m * sh * size, v.data_ptr(),
                                                 n, b, tw, c, sn, sh, sw, threads)
        prod = torch.bmm(v, self.u)  # [a*a, tiles, K]
        on, oh, ow, _ = out.stride()
        bias = 0 if self.bias32 is None else self.bias32.data_ptr()
        getattr(lib, f"winograd_out{m}_{suffix}")(prod.data_ptr(), out.data_ptr() + r * m * oh * size, bias,
                                                  n, b, tw, k, on, oh, ow, threads)

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
    return model
