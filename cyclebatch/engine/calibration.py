"""`--backend auto`: per shape class, the backend that measured faster on this CPU.

Which engine wins depends on the CPU (OpenVINO's bf16 kernels lead on AVX512-BF16 CPUs, the torch
path's Winograd trunk on AVX2-only ones) and on the image size, so the first image of a new shape class
is preceded by a short calibration: both backends warmed up twice (the torch path's first passes at a
new shape still allocate and plan), then timed in three interleaved rounds on an input of that class.
OpenVINO is kept only when its median beats torch's by MARGIN: a near tie goes to the torch path, which
needs no conversion and is the more faithful at fp32. (Measured: one warm-up and two rounds picked
OpenVINO at 256 px on a CPU where torch was 13% faster over five rounds.) Decisions are cached in
`$CYCLEBATCH_HOME/calibration.json`, keyed by CPU model, core count, torch threads, architecture,
precision and shape class, so a CPU calibrates each class once.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch

WARMUPS = 2
ROUNDS = 3
MARGIN = 0.03  # OpenVINO must be this much faster to be chosen
CLASS_SIDES = (256, 512, 1024)  # calibrated at these squares: images are classed by the nearest area


def shape_class(height: int, width: int) -> int:
    """The side of the class's square: 256, 512 or 1024 (by area, on a log scale)."""
    area = max(1, height * width)
    return min(CLASS_SIDES, key=lambda s: abs(math.log(area / (s * s))))


def cpu_model() -> str:
    from .device import cpu_has_native_bf16, cpu_model_name

    name = cpu_model_name()
    return f"{name or 'unknown CPU'}|{os.cpu_count()} cores|{'bf16' if cpu_has_native_bf16() else 'no-bf16'}"


def cache_path() -> Path:
    from ..models.registry import home

    return home() / "calibration.json"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: calibrate again


def _store(path: Path, key: str, entry: dict) -> None:
    from ..io.files import atomic_path

    data = _load(path)
    data[key] = entry
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # an unwritable cache directory costs a calibration next time, nothing else


class AutoBackend:
    """Runs each pass on the backend chosen for its shape class (calibrating a new class first)."""

    def __init__(self, translator, torch_backend, openvino_backend, path: Optional[Path] = None):
        self.t, self.torch, self.openvino = translator, torch_backend, openvino_backend
        self.path = path
        self.choice: dict[int, object] = {}
        self.calibrations = 0  # calibrations this backend ran (not read from the cache)
        self.last = torch_backend

    @property
    def name(self) -> str:
        return self.last.name

    def key(self, side: int) -> str:
        c = getattr(self.t.model, "config", None)
        arch = f"{getattr(c, 'name', type(self.t.model).__name__)}-ngf{getattr(c, 'ngf', '')}"
        # the configured thread count, not the current one: the governor lowers that while cores are busy
        governor = getattr(self.t, "governor", None)
        threads = governor.max_threads if governor is not None else torch.get_num_threads()
        return f"{cpu_model()}|{threads} threads|{arch}|{self.t.precision}|{side}px"

    def backend_for(self, height: int, width: int):
        side = shape_class(height, width)
        chosen = self.choice.get(side)
        if chosen is None:
            path = self.path or cache_path()
            key = self.key(side)
            entry = _load(path).get(key)
            if entry is None or entry.get("backend") not in ("torch", "openvino"):
                entry = self.calibrate(side)
                _store(path, key, entry)
            chosen = self.choice[side] = self.openvino if entry["backend"] == "openvino" else self.torch
        return chosen

    @torch.inference_mode()
    def calibrate(self, side: int) -> dict:
        self.calibrations += 1
        x = torch.rand(1, 3, side, side) * 2 - 1
        engines = {"torch": self.torch, "openvino": self.openvino}
        self.openvino.prepare(tuple(x.shape))  # conversion and compilation are not the engine's speed
        times: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(WARMUPS):
            for k, b in engines.items():
                b.forward(x)
        for _ in range(ROUNDS):  # interleaved, so that load from elsewhere hits both alike
            for k, b in engines.items():
                start = time.perf_counter()
                b.forward(x)
                times[k].append(time.perf_counter() - start)
        median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        winner = "openvino" if median["openvino"] < median["torch"] * (1 - MARGIN) else "torch"
        return {"backend": winner, "ms": {k: round(v * 1000, 1) for k, v in median.items()},
                "at": time.strftime("%Y-%m-%d %H:%M:%S")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = self.backend_for(x.shape[-2], x.shape[-1])
        return self.last.forward(x)
