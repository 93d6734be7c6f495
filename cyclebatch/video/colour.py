"""YUV 4:2:0 <-> RGB in torch, on whatever device the frames are on (video's GPU path).

On a GPU the model is fast enough that FFmpeg's conversions on the CPU (swscale) become the bottleneck;
these do the same work next to the model. They follow FFmpeg's own conversion (checked against it in
tests/test_video.py): the matrix and range of the stream, chroma upsampled by repeating each sample over
its 2x2 block and RGB truncated to whole levels (swscale's yuv420p -> rgb24); chroma downsampled by
averaging horizontal pairs and filtering down the rows with (1, 3, 3, 1) / 8, YUV rounded (swscale's
rgb24 -> yuv420p). On examples/clip.mp4: RGB within 2 levels of FFmpeg's, YUV within 1.

On a CPU swscale is the faster choice by far (benchmarks/bench_video_io.py), so video.py uses these on
CUDA only.

Layout: one frame is FFmpeg's yuv420p array, (H * 3 / 2, W) uint8 (`VideoFrame.to_ndarray()`): the Y
plane, then U and V at half width and height, each plane's rows packed one after another. H and W even.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

# AVColorSpace -> (Kr, Kb). Unspecified (2) is BT.601, as FFmpeg assumes.
MATRICES = {
    1: (0.2126, 0.0722),  # BT.709
    2: (0.299, 0.114),  # unspecified
    4: (0.30, 0.11),  # FCC
    5: (0.299, 0.114),  # BT.470BG (BT.601 625)
    6: (0.299, 0.114),  # SMPTE 170M (BT.601 525)
    7: (0.212, 0.087),  # SMPTE 240M
    9: (0.2627, 0.0593),  # BT.2020 non-constant luminance
}


def supported(colorspace: int) -> bool:
    return colorspace in MATRICES


@functools.lru_cache(maxsize=None)
def _matrices(colorspace: int, full_range: bool, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB (0..255) -> YUV levels and back, as 3x3 matrices, and the levels' offsets, on `device`."""
    kr, kb = MATRICES[colorspace]
    kg = 1.0 - kr - kb
    to_ypbpr = torch.tensor([[kr, kg, kb],
                             [-0.5 * kr / (1 - kb), -0.5 * kg / (1 - kb), 0.5],
                             [0.5, -0.5 * kg / (1 - kr), -0.5 * kb / (1 - kr)]], dtype=torch.float64)
    scale = torch.tensor([255.0, 255.0, 255.0] if full_range else [219.0, 224.0, 224.0], dtype=torch.float64)
    offset = torch.tensor([0.0, 128.0, 128.0] if full_range else [16.0, 128.0, 128.0])
    forward = to_ypbpr * scale.view(3, 1) / 255.0
    inverse = torch.linalg.inv(to_ypbpr) / scale * 255.0
    return forward.float().to(device), inverse.float().to(device), offset.to(device)


def split_planes(yuv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, H * 3 / 2, W] -> Y [N, H, W], U and V [N, H / 2, W / 2] (views where the layout allows)."""
    n, rows, w = yuv.shape
    h = rows * 2 // 3
    flat = yuv.reshape(n, -1)
    y = flat[:, :h * w].view(n, h, w)
    u = flat[:, h * w:h * w * 5 // 4].view(n, h // 2, w // 2)
    v = flat[:, h * w * 5 // 4:].view(n, h // 2, w // 2)
    return y, u, v


def yuv420_to_rgb(yuv: torch.Tensor, colorspace: int = 2, full_range: bool = False) -> torch.Tensor:
    """yuv420p frames [N, H * 3 / 2, W] uint8 -> RGB [N, 3, H, W] float32, whole levels in 0..255."""
    y, u, v = split_planes(yuv)
    chroma = torch.stack([u, v], 1).float()
    chroma = chroma.repeat_interleave(2, 2).repeat_interleave(2, 3)  # each sample covers its 2x2 block
    return _ycc_to_rgb(torch.cat([y.unsqueeze(1).float(), chroma], 1), colorspace, full_range)


def _ycc_to_rgb(ycc: torch.Tensor, colorspace: int, full_range: bool) -> torch.Tensor:
    _, m, offset = _matrices(colorspace, full_range, str(ycc.device))
    rgb = _mix(m, ycc - offset.view(1, 3, 1, 1))
    # Truncated, not rounded: swscale truncates here, and so the GPU path's model input stays within 2
    # levels of the CPU path's (rounded: within 3, 1.1 levels off on average instead of 0.6).
    return rgb.floor_().clamp_(0, 255)


def yuv420_thumbnail(yuv: np.ndarray, colorspace: int = 2, full_range: bool = False) -> np.ndarray:
    """About 4096 RGB pixels of a yuv420p frame, evenly spread (what stabilize.colour_histogram samples)."""
    h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
    step = max(1, int(np.sqrt(h * w / 4 / 4096)))
    y, u, v = split_planes(torch.from_numpy(yuv).unsqueeze(0))
    ycc = torch.stack([y[:, ::2 * step, ::2 * step], u[:, ::step, ::step], v[:, ::step, ::step]], 1).float()
    return _ycc_to_rgb(ycc, colorspace, full_range)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """m [K, 3] applied to the channels of x [N, 3, H, W]. Elementwise on purpose: a matmul or conv may
    run in TF32 or fp16 on a GPU (autocast, cuDNN defaults), which moves values of 255 by a level."""
    return torch.stack([m[i, 0] * x[:, 0] + m[i, 1] * x[:, 1] + m[i, 2] * x[:, 2] for i in range(m.shape[0])], 1)


def rgb_to_yuv420(rgb: torch.Tensor, colorspace: int = 2, full_range: bool = False) -> torch.Tensor:
    """RGB [N, 3, H, W] float in 0..255 -> yuv420p frames [N, H * 3 / 2, W] uint8 (H and W even)."""
    m, _, off = _matrices(colorspace, full_range, str(rgb.device))
    n, _, h, w = rgb.shape
    rgb = rgb.float()
    y = _mix(m[:1], rgb)[:, 0] + off[0]
    # Chroma of each horizontal pair's mean, then (1, 3, 3, 1) / 8 down the rows, edges repeated.
    pairs = rgb.reshape(n, 3, h, w // 2, 2).mean(-1)
    c = F.pad(_mix(m[1:], pairs), (0, 0, 1, 1), mode="replicate")
    c = (c[:, :, 0:-3:2] + 3 * c[:, :, 1:-2:2] + 3 * c[:, :, 2:-1:2] + c[:, :, 3::2]) / 8 + off[1]
    planes = [p.round().clamp_(0, 255).to(torch.uint8).reshape(n, -1) for p in (y, c[:, 0], c[:, 1])]
    return torch.cat(planes, 1).view(n, h * 3 // 2, w)
