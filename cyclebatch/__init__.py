"""cyclebatch: unpaired image-to-image translation with CycleGAN generators, at batch scale."""

__version__ = "0.1.0"

import time as _time

IMPORT_STARTED = _time.time()  # when this process began importing cyclebatch (`benchmarks/bench_ray.py --timeline`)

from .checkpoints import load_file, save_generator  # noqa: E402
from .errors import CycleBatchError  # noqa: E402
from .networks import GeneratorConfig, PatchDiscriminator, ResnetGenerator, UnetGenerator  # noqa: E402
from .registry import ZOO, load_generator, resolve  # noqa: E402

__all__ = [
    "CycleBatchError", "GeneratorConfig", "PatchDiscriminator", "ResnetGenerator", "UnetGenerator", "ZOO",
    "load_file", "load_generator", "resolve", "save_generator",
]
