"""What every benchmark shares: the model to measure."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cyclebatch.errors import CycleBatchError  # noqa: E402
from cyclebatch.networks import ResnetGenerator, init_weights  # noqa: E402
from cyclebatch.registry import load_generator  # noqa: E402


def model_or_random(name: str) -> tuple[ResnetGenerator, str]:
    """The named model; offline or unknown, a seeded random-init resnet_9blocks (speed does not depend on
    the weights). The note goes to stderr: some benchmarks keep stdout for machine-readable lines."""
    try:
        return load_generator(name, quiet=True), name
    except CycleBatchError as e:
        print(f"# model '{name}' unavailable ({e}); using a random-init resnet_9blocks", file=sys.stderr)
        torch.manual_seed(0)
        return init_weights(ResnetGenerator()).eval(), "random resnet_9blocks"
