"""cyclebatch: unpaired image-to-image translation with CycleGAN generators, at batch scale."""

__version__ = "0.1.0"

import time as _time

IMPORT_STARTED = _time.time()  # when this process began importing cyclebatch (`benchmarks/bench_ray.py --timeline`)

# The public API, each name imported from its module on first use: the CLI imports this package, and
# `cyclebatch --help` or a mistyped option should answer without importing torch (2-3 s on a small machine).
_API = {
    "CycleBatchError": "errors",
    "GeneratorConfig": "networks", "PatchDiscriminator": "networks", "ResnetGenerator": "networks",
    "UnetGenerator": "networks",
    "ZOO": "registry", "load_generator": "registry", "resolve": "registry",
    "load_file": "checkpoints", "save_generator": "checkpoints",
}
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
