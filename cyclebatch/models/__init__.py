"""Generators as data: networks.py (official state_dict keys), graph.py (the [0, 1] any-size graph every
backend and exporter shares), checkpoints.py (safe reading of every layout), registry.py (the zoo, names,
the cache), download.py (verified, atomic downloads)."""

from .. import lazy_api

_API = {"load_generator": "registry", "resolve": "registry", "ZOO": "registry", "load_file": "checkpoints",
        "save_generator": "checkpoints", "GeneratorConfig": "networks", "ResnetGenerator": "networks"}
__all__ = sorted(_API)
__getattr__ = lazy_api(__name__, _API)
