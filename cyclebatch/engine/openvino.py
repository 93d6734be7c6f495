"""The OpenVINO backend: the generator converted in memory from the PyTorch module, compiled per input shape.

Conversion traces the module (6-45 s for a 9-block ResNet), so the converted model is kept as IR under
the cache directory (`$CYCLEBATCH_HOME/openvino/`), keyed by a hash of the weights, the architecture and
the OpenVINO version; later runs read it back in well under a second. The IR has dynamic N, H and W;
each input shape gets its own compiled model (static shapes let the CPU plugin pick its kernels), kept
for the last few shapes. bf16 is OpenVINO's inference precision hint (its own kernels, fp32 weights in
the file); fp32 is the f32 hint.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import CycleBatchError

EXTRA = "pip install 'cyclebatch[openvino]'"
KEEP_SHAPES = 8  # compiled models kept (one per input shape); a folder of many sizes recompiles the rarest


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """openvino's import and converter send usage telemetry from a forked process (and wait for it) unless
    CI=true; cyclebatch users did not opt in to that. The variable is set only while OpenVINO code runs."""
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved


def bin_path(xml: str | Path) -> Path:
    return Path(xml).with_suffix(".bin")


@contextlib.contextmanager
def atomic_ir(path: str | Path) -> Iterator[Path]:
    """Like fileio.atomic_path for the two files of an IR: yields a temporary .xml name (its .bin beside
    it); on success the .bin and then the .xml are renamed into place; on failure both are removed."""
    from ..io.files import note_free_space, temp_name

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        for p in (bin_path(tmp), tmp):
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(bin_path(tmp), bin_path(path))
        os.replace(tmp, path)  # last: an .xml in place means its .bin is too
    except BaseException as e:
        note_free_space(e, path)
        for p in (tmp, bin_path(tmp)):
            with contextlib.suppress(OSError):
                p.unlink()
        raise


def import_openvino():
    try:
        with no_telemetry():
            import openvino
    except ImportError:
        raise CycleBatchError(f"the openvino backend needs openvino: {EXTRA}") from None
    return openvino


def weights_key(model: torch.nn.Module, ov_version: str) -> str:
    """Same weights, same architecture, same OpenVINO: same IR."""
    h = hashlib.sha256(f"{type(model).__name__}|{getattr(model, 'config', '')}|{ov_version}".encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


class OpenVINOBackend:
    def __init__(self, model: torch.nn.Module, precision: str, threads: int | None = None,
                 cache_dir: Path | None = None):
        if precision not in ("fp32", "bf16"):
            raise CycleBatchError(f"the openvino backend runs fp32 or bf16, not {precision}")
        self.ov = import_openvino()  # a missing extra fails here, at construction, in one line
        self.model, self.precision = model, precision
        self.name = f"openvino {precision}"
        self.threads = threads
        self.cache_dir = cache_dir
        self.converted = None  # the dynamic-shape ov.Model
        self.compiled: collections.OrderedDict[tuple, object] = collections.OrderedDict()
        self.conversions = 0  # traced conversions this backend did (0 when the IR came from the cache)

    def ir_path(self) -> Path:
        from ..models.registry import home

        base = self.cache_dir or home() / "openvino"
        return base / f"generator-{weights_key(self.model, self.ov.__version__)}.xml"

    def _converted(self):
        if self.converted is not None:
            return self.converted
        path = self.ir_path()
        core = self.ov.Core()
        if path.is_file() and path.with_suffix(".bin").is_file():
            try:
                self.converted = core.read_model(str(path))
                return self.converted
            except Exception:  # a damaged cache entry: convert again and replace it
                pass
        self.converted = self._convert()
        self.conversions += 1

        try:
            with atomic_ir(path) as tmp:
                self.ov.save_model(self.converted, str(tmp), compress_to_fp16=False)
        except OSError:
            pass  # an unwritable cache costs the next run a conversion, not this one its images
        return self.converted

    def _convert(self):
        from ..models.graph import portable_copy

        net = portable_copy(self.model)
        try:
            with no_telemetry(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self.ov.convert_model(net, example_input=torch.rand(1, 3, 64, 64) * 2 - 1,
                                             input=[self.ov.PartialShape([-1, 3, -1, -1])])
        except Exception as e:
            text = str(e).strip().splitlines()
            raise CycleBatchError(f"OpenVINO conversion failed: {text[0] if text else type(e).__name__}") from None

    def request(self, shape: tuple):
        """The infer request compiled for exactly this input shape."""
        req = self.compiled.get(shape)
        if req is not None:
            self.compiled.move_to_end(shape)
            return req
        model = self._converted().clone()
        model.reshape({0: self.ov.PartialShape(list(shape))})
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": int(self.threads or torch.get_num_threads())}
        req = self.ov.Core().compile_model(model, "CPU", config).create_infer_request()
        self.compiled[shape] = req
        while len(self.compiled) > KEEP_SHAPES:
            self.compiled.popitem(last=False)
        return req

    def prepare(self, shape: tuple) -> None:
        """Convert and compile for this shape now (so that a timing excludes it)."""
        self.request(tuple(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..models.networks import pad_to_multiple

        x, (h, w) = pad_to_multiple(x.float(), int(getattr(self.model, "size_multiple", 4)))
        arr = np.ascontiguousarray(x.cpu().numpy())
        req = self.request(tuple(arr.shape))
        req.infer({0: arr})
        y = torch.from_numpy(np.array(req.get_output_tensor(0).data))  # a copy: the request reuses its buffer
        return y[..., :h, :w]
