"""Engine backends: OpenVINO's fidelity against the torch path, auto's calibration cache, the missing extra,
tiles and shared statistics staying on torch (and saying so), and the torch threads that follow the load."""

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTOS, run_cli, tiny_generator
from cyclebatch.models import registry
from cyclebatch.cli.run import _backends_note
from cyclebatch.engine.cpu.threads import ThreadGovernor
from cyclebatch.engine.translator import Translator
from cyclebatch.errors import CycleBatchError

# Read before the autouse fixture empties CYCLEBATCH_HOME: where a real model may already be cached.
USER_ZOO = registry.zoo_dir()


@pytest.fixture(scope="module")
def ov():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CI", "true")  # no telemetry from the import (see backend_openvino.no_telemetry)
        yield pytest.importorskip("openvino", reason="pip install 'cyclebatch[openvino]'")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """[-1, 1] tensors compared in 8-bit levels (peak 255)."""
    a, b = (torch.as_tensor(t).float().add(1).mul(127.5).round().clamp(0, 255) for t in (a, b))
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def photo(size: int) -> torch.Tensor:
    im = Image.open(PHOTOS / "chelsea.png").convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 127.5 - 1


def fidelity(net, x) -> dict:
    with torch.inference_mode():
        ref = net.float()(x)
        out = {}
        for p in ("fp32", "bf16"):
            for b in ("torch", "openvino"):
                out[b, p] = psnr(Translator(net, device="cpu", precision=p, backend=b).forward(x), ref)
    return out


def test_openvino_matches_the_torch_path_at_the_same_precision(ov):
    r = fidelity(tiny_generator(1), photo(72))
    # fp32: both within rounding of eager fp32 (a level or so on a rare pixel)
    assert r["torch", "fp32"] >= 80 and r["openvino", "fp32"] >= 80, r
    # bf16: OpenVINO's hint is no worse than the torch path's bf16 (Winograd F(2,3)) by more than 0.5 dB
    assert r["openvino", "bf16"] >= r["torch", "bf16"] - 0.5, r
    assert r["openvino", "bf16"] >= 45, r


@pytest.mark.skipif(not (USER_ZOO / "vintage.pth").is_file(), reason="the vintage weights are not cached here")
def test_real_model_bf16_stays_above_50_db_against_eager_fp32(ov):
    """Measured on the vintage generator, 256 px, china/chelsea/astronaut: torch bf16 51.5-54.0 dB, OpenVINO bf16
    54.0-56.2 dB, both fp32 paths > 83 dB. 50 dB is what the issue asks and what both clear on real photos."""
    net = registry.load_generator(str(USER_ZOO / "vintage.pth"), quiet=True)
    r = fidelity(net, photo(128))
    assert r["openvino", "bf16"] >= 50 and r["torch", "bf16"] >= 50, r
    assert r["openvino", "bf16"] >= r["torch", "bf16"] - 0.5, r
    assert r["openvino", "fp32"] >= 80 and r["torch", "fp32"] >= 80, r


def test_auto_calibrates_once_per_cpu_and_shape_class(ov, cyclebatch_home):
    net = tiny_generator(2)
    image = np.zeros((60, 70, 3), np.uint8)
    first = Translator(net, device="cpu", precision="fp32", backend="auto")
    out = first.translate(image)
    assert out.shape == image.shape and first.backend.calibrations == 1
    assert first.backend.openvino.conversions == 1
    cache = json.loads((cyclebatch_home / "calibration.json").read_text())
    (entry,) = cache.values()
    assert entry["backend"] in ("torch", "openvino") and set(entry["ms"]) == {"torch", "openvino"}
    assert sum(first.stats.backends.values()) == 1 and next(iter(first.stats.backends)) == f"{entry['backend']} fp32"

    second = Translator(net, device="cpu", precision="fp32", backend="auto")  # a new process, in effect
    second.translate(np.zeros((64, 64, 3), np.uint8))  # the same class (about 256 px and below)
    assert second.backend.calibrations == 0
    second.translate(np.zeros((400, 420, 3), np.uint8))  # the 512 px class: measured once more
    assert second.backend.calibrations == 1
    assert len(json.loads((cyclebatch_home / "calibration.json").read_text())) == 2
    if second.backend.openvino.converted is not None:  # the IR came from the cache, not a new trace
        assert second.backend.openvino.conversions == 0


def test_without_openvino_auto_is_torch_and_openvino_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    auto = Translator(tiny_generator(), device="cpu", precision="fp32", backend="auto")
    auto.translate(np.zeros((40, 40, 3), np.uint8))
    assert dict(auto.stats.backends) == {"torch fp32": 1}
    with pytest.raises(CycleBatchError, match=r"pip install 'cyclebatch\[openvino\]'"):
        Translator(tiny_generator(), device="cpu", precision="fp32", backend="openvino")

    # the CLI: one line naming the extra, no traceback (a stub package stands in for a missing openvino)
    stub = tmp_path / "stub" / "openvino"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('no openvino here')\n")
    model = tmp_path / "tiny.pth"
    torch.save(tiny_generator().state_dict(), model)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "a.png")
    from conftest import ROOT

    r = run_cli("run", src, "-o", tmp_path / "out", "-m", model, "--backend", "openvino",
                env={"PYTHONPATH": f"{stub.parent}:{ROOT}"})
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'cyclebatch[openvino]'" in r.stderr and not (tmp_path / "out" / "a.png").exists()
    r = run_cli("run", src, "-o", tmp_path / "out", "-m", model, "--backend", "fast")
    assert r.returncode != 0 and "unknown backend 'fast'" in r.stderr and "Traceback" not in r.stderr


def test_tiles_and_shared_statistics_run_on_torch_and_say_so(ov, tmp_path):
    from cyclebatch.video.shared_stats import StableStats

    net = tiny_generator(3)
    frames = [np.asarray(Image.open(PHOTOS / "chelsea.png").convert("RGB").resize((64, 48)))] * 2
    t = Translator(net, device="cpu", precision="fp32", backend="openvino", tile=32, context=16)
    t.translate(frames[0])
    assert dict(t.stats.backends) == {"torch fp32 (tiled)": 1}

    t = Translator(net, device="cpu", precision="fp32", backend="openvino")
    plain = t.translate_batch(frames)
    with StableStats(t) as stable:
        shared = t.translate_batch(frames, listener=stable)
    assert dict(t.stats.backends) == {"openvino fp32": 2, "torch fp32 (shared statistics)": 2}
    assert np.abs(shared[0].astype(int) - plain[0]).max() <= 1  # the first frame of a shot: its own statistics

    model = tmp_path / "tiny.pth"
    torch.save(net.state_dict(), model)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(frames[0]).save(src / "a.png")
    Image.fromarray(np.zeros((300, 380, 3), np.uint8)).save(src / "big.png")
    r = run_cli("run", src, "-o", tmp_path / "out", "-m", model, "--precision", "fp32", "--backend", "openvino",
                "--max-memory", "12M", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backends"] == {"openvino fp32": 1, "torch fp32 (tiled)": 1}
    # the summary line (not printed with --json) says the same
    assert _backends_note({"torch fp32 (tiled)": 1, "openvino fp32": 3}) == \
        " via openvino fp32 (3), torch fp32 (tiled) (1)"


def test_torch_threads_follow_the_cores_other_processes_leave(monkeypatch):
    saved = torch.get_num_threads()
    readings = iter([(0, 0), (100, 50), (200, 100), (400, 150), (500, 250)])  # (all busy, ours) in ticks
    clock = iter(range(0, 100, 1))
    g = ThreadGovernor(threads=2, cores=2, sample=lambda: next(readings), clock=lambda: float(next(clock)))
    g.hz = 100
    try:
        assert g.adapt() == 2  # 1 s: others 0.5 core -> still both cores
        assert g.adapt() == 2  # others 0.5 core again
        assert g.adapt() == 1 and torch.get_num_threads() == 1  # others 1.5 cores: one thread left
        assert g.adapt() == 2 and torch.get_num_threads() == 2  # others gone: back to the start count, not more
        assert g.changes == 2
    finally:
        torch.set_num_threads(saved)


def test_our_own_children_are_not_other_processes():
    """A compiler or encoder this process ran (and reaped) is our work: the native kernels' first build,
    counted as another process's, once took a `run` down to one thread mid-way."""
    from cyclebatch.engine.cpu.threads import _jiffies

    before = _jiffies()
    child_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"],
                   check=True)
    child_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = _jiffies()
    child_ticks = ((child_after.ru_utime + child_after.ru_stime) - (child_before.ru_utime + child_before.ru_stime)) \
        * os.sysconf("SC_CLK_TCK")
    assert child_ticks >= 40
    assert after[1] - before[1] >= child_ticks - 2  # the child's time is in our own count (to a tick each way)


def test_pinned_thread_count_turns_the_governor_off(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert Translator(tiny_generator(0), device="cpu", precision="fp32", adapt_threads=True).governor is not None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert Translator(tiny_generator(0), device="cpu", precision="fp32", adapt_threads=True).governor is None


class _Timed:
    """A stand-in backend whose passes take a set time on a fake clock (the decision rule alone, deterministic)."""

    def __init__(self, name: str, seconds: float, clock: list):
        self.name, self.seconds, self.clock, self.calls = name, seconds, clock, 0

    def prepare(self, shape) -> None:
        pass

    def forward(self, x):
        self.calls += 1
        self.clock[0] += self.seconds
        return x


@pytest.mark.parametrize("torch_s, openvino_s, expected", [(0.020, 0.010, "openvino"),   # clearly faster
                                                           (0.020, 0.0198, "torch"),     # a near tie
                                                           (0.010, 0.020, "torch")])
def test_calibration_keeps_torch_unless_openvino_is_clearly_faster(tmp_path, monkeypatch, torch_s, openvino_s,
                                                                   expected):
    from types import SimpleNamespace

    from cyclebatch.engine import calibration
    from cyclebatch.engine.calibration import MARGIN, ROUNDS, WARMUPS, AutoBackend

    clock = [0.0]
    monkeypatch.setattr(calibration.time, "perf_counter", lambda: clock[0])
    assert 0 < MARGIN < 0.1
    fake = SimpleNamespace(model=tiny_generator(0), precision="fp32", governor=None)
    tb, ob = _Timed("torch", torch_s, clock), _Timed("openvino", openvino_s, clock)
    auto = AutoBackend(fake, tb, ob, path=tmp_path / "calibration.json")
    auto.forward(torch.zeros(1, 3, 64, 64))
    assert auto.last is (ob if expected == "openvino" else tb)
    assert json.loads((tmp_path / "calibration.json").read_text()).popitem()[1]["backend"] == expected
    assert ob.calls == WARMUPS + ROUNDS + (expected == "openvino")  # every round timed both
