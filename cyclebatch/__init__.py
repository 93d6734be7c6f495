"""cyclebatch: unpaired image-to-image translation with CycleGAN generators, at batch scale.

The package is built in wings, one per stage, and a wing may import only the wings below it:

    cli  ->  train | run | video | export  ->  engine  ->  models  ->  io  ->  errors

cli (the commands, a thin layer), train (CycleGAN training), run (folders of images), video (videos and
frame folders), export (ONNX, TorchScript, TFLite, OpenVINO files), engine (Translator: device,
precision, batches, tiles, backends, CPU kernels), models (networks, checkpoints, the zoo, downloads),
io (images, object storage, atomic files, input discovery, report pages), errors (the one error type).
No circle, and no import of another wing's private (_underscore) names: tests/test_architecture.py reads
every import and checks both. Each wing's __init__ imports nothing until a name is used, so
`cyclebatch --help` and option mistakes answer without importing torch.
"""

__version__ = "0.1.0"

import time as _time

IMPORT_STARTED = _time.time()  # when this process began importing cyclebatch (`benchmarks/bench_ray.py --timeline`)

# The public API, each name imported from its module on first use: the CLI imports this package, and
# `cyclebatch --help` or a mistyped option should answer without importing torch (2-3 s on a small machine).
_API = {
    "CycleBatchError": "errors",
    "GeneratorConfig": "models.networks", "PatchDiscriminator": "models.networks",
    "ResnetGenerator": "models.networks", "UnetGenerator": "models.networks",
    "ZOO": "models.registry", "load_generator": "models.registry", "resolve": "models.registry",
    "load_file": "models.checkpoints", "save_generator": "models.checkpoints",
    "Translator": "engine.translator", "translate_paths": "run.pipeline", "RunOptions": "run.pipeline",
    "translate_video": "video.api", "TrainConfig": "train.config",
}
# `export` and `train` are the wings' names (cyclebatch.export.export, cyclebatch.train.train): a package
# attribute cannot be both a subpackage and a function.
__all__ = sorted(_API)


def lazy_api(package: str, api: dict):
    """A package's module __getattr__ (PEP 562) that imports each name of `api` ({name: submodule}) from its
    submodule on first use, then keeps it in the package."""
    def __getattr__(name: str):
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib
        import sys

        value = getattr(importlib.import_module(f".{api[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


__getattr__ = lazy_api(__name__, _API)
