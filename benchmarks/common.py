"""What the benchmarks share: the model to measure, and PSNR."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cyclebatch.errors import CycleBatchError  # noqa: E402
from cyclebatch.models.networks import ResnetGenerator, init_weights  # noqa: E402
from cyclebatch.models.registry import load_generator  # noqa: E402


def model_or_random(name: str) -> tuple[ResnetGenerator, str]:
    """The named model; offline or unknown, a seeded random-init resnet_9blocks (speed does not depend on
    the weights). The note goes to stderr: some benchmarks keep stdout for machine-readable lines."""
    try:
        return load_generator(name, quiet=True), name
    except CycleBatchError as e:
        print(f"# model '{name}' unavailable ({e}); using a random-init resnet_9blocks", file=sys.stderr)
        torch.manual_seed(0)
        return init_weights(ResnetGenerator()).eval(), "random resnet_9blocks"


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))
