"""How close a student comes to its teacher: PSNR and SSIM between two uint8 images, and the held-out scorer.

The scorer runs the student the way `run` will (the engine: its precision, kernels and whole-image
InstanceNorm statistics) on whole held-out photos and compares with the teacher's outputs, computed once.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two same-shape uint8 images (100 for identical ones)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse < 1e-10 else 10 * math.log10(255.0 ** 2 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return g


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004: 11 px Gaussian window, sigma 1.5, K1 0.01, K2 0.03), the mean
    over pixels and channels of two same-shape uint8 images."""
    x = torch.from_numpy(np.array(a, dtype=np.float64)).permute(2, 0, 1).unsqueeze(1)  # copies: inputs may be read-only
    y = torch.from_numpy(np.array(b, dtype=np.float64)).permute(2, 0, 1).unsqueeze(1)
    g = _gaussian()
    if min(x.shape[-2:]) < g.numel():
        return 1.0 if np.array_equal(a, b) else float("nan")

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable, valid region only
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


class HeldOut:
    """Held-out photos and the teacher's outputs for them; scores a student against those."""

    def __init__(self, names: Sequence[str], inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]):
        self.names, self.inputs, self.targets = list(names), list(inputs), list(targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def outputs(self, translator) -> list[np.ndarray]:
        return [translator.translate(x) for x in self.inputs]

    def score(self, outputs: Sequence[np.ndarray]) -> tuple[float, float]:
        """(mean PSNR in dB, mean SSIM) of `outputs` against the teacher's, image by image."""
        pairs = list(zip(outputs, self.targets))
        return (float(np.mean([psnr(o, t) for o, t in pairs])), float(np.mean([ssim(o, t) for o, t in pairs])))
