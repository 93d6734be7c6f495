"""The engine: `Translator` runs a generator over images (device, precision, batches, tiles, backends).

translator.py  Translator: per-size plans, the pass loop, out-of-memory retries, pinned transfers
device.py      the device, the precision `auto` picks, the memory layout, what the CPU can do
backends.py    what runs a full-frame pass (torch, or OpenVINO: openvino.py); auto by calibration.py
memory.py      the bytes a pass needs and the bytes free        tiling.py  seamless tiles, exact statistics
cpu/           threads.py (torch threads follow the free cores), winograd.py, narrow_conv.py, native.py
"""

from .. import lazy_api

_API = {"Translator": "translator", "EngineStats": "translator", "estimate_bytes": "memory",
        "pick_device": "device", "pick_precision": "device"}
__all__ = sorted(_API)
__getattr__ = lazy_api(__name__, _API)
