import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from cyclebatch.models.networks import GeneratorConfig, ResnetGenerator, init_weights

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "photos"
TINY = GeneratorConfig(ngf=8, n_blocks=2)

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_generator(seed: int = 0, **kw) -> ResnetGenerator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(**{**TINY.to_dict(), **kw})
    net = init_weights(ResnetGenerator(cfg))
    # Non-trivial biases and affine weights so that a wrong mapping of any tensor shows in the output.
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    return net.eval()


@pytest.fixture(scope="session")
def native_builds(tmp_path_factory):
    return tmp_path_factory.mktemp("native")


@pytest.fixture(autouse=True)
def cyclebatch_home(tmp_path, monkeypatch, native_builds):
    """Every test gets its own empty cache and works in its own folder: nothing leaks between tests.
    Except the native kernels' builds (native.py), shared by the whole session: a CLI test in a fresh
    process would otherwise compile them again (a second or two, a hundred times)."""
    home = tmp_path / "cbhome"
    home.mkdir()
    (home / "native").symlink_to(native_builds, target_is_directory=True)
    monkeypatch.setenv("CYCLEBATCH_HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


PINNED_THREADS = os.environ.get("OMP_NUM_THREADS") or str(torch.get_num_threads())


def run_cli(*args, cwd=None, env=None, timeout=300):
    """Run `python -m cyclebatch ...` as a user would, returning the CompletedProcess."""
    # A pinned thread count: `run` otherwise follows other processes' load (engine/cpu/threads.py), and a changed count
    # changes fp32 rounding, which tests comparing two processes' outputs bit for bit would see as a flake.
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "OMP_NUM_THREADS": PINNED_THREADS,
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "cyclebatch", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


class Concurrency:
    """How many calls run at once (`most`) and the torch threads each ran with: `with recorder.call(): ...`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.threads: set[int] = set()

    @contextlib.contextmanager
    def call(self):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(torch.get_num_threads())
        try:
            yield
        finally:
            with self.lock:
                self.running -= 1


@contextlib.contextmanager
def torch_threads(n=None):
    """torch's thread count set to n (if given) inside, and the caller's count back after, however it ends."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    """Two torch threads for the test (the pipelines split them into teams), the caller's count after."""
    with torch_threads(2):
        yield
