import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, tiny_generator, torch_threads
from cyclebatch.engine.translator import Translator
from cyclebatch.errors import CycleBatchError
from cyclebatch.io.files import TMP_MARK
from cyclebatch.run.pipeline import Reporter, RunOptions, translate_paths

ray = pytest.importorskip("ray")
from cyclebatch.run import rayrun  # noqa: E402

FP32 = {"device": "cpu", "precision": "fp32"}
CLUSTER_CPUS = 2  # the test cluster's: its one CPU actor runs this many torch threads


def local_translator() -> Translator:
    """The local run to compare with, at the actor's thread count: a changed count changes fp32 rounding,
    and this process's own count is the machine's cores (2 on CI, more elsewhere)."""
    torch.set_num_threads(CLUSTER_CPUS)
    return Translator(tiny_generator(), **FP32)


@pytest.fixture(autouse=True)
def _threads_restored():
    with torch_threads():
        yield


@pytest.fixture(scope="module")
def cluster():
    """One local 2-CPU cluster of the tests' own for every test here (not one that already runs on this
    machine), shut down at the end."""
    assert rayrun.connect("local", num_cpus=CLUSTER_CPUS).startswith("started a local cluster")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def make_images(root, n, seed=0):
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        sub = root / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        size = (32, 32) if i % 3 else (40, 24)  # two sizes: batches by size on both paths
        f = sub / (f"{i:03d}.png" if i % 4 else f"{i:03d}.jpg")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(f)
        files.append(f)
    (root / "part0" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return files


class Heard(Reporter):
    """Records the statuses a run gives its reporter, and its advances, in order."""

    def __init__(self):
        self.events = []

    def status(self, text: str) -> None:
        self.events.append(text)

    def advance(self, n: int = 1) -> None:
        self.events.append("advance")


def outputs(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class DyingLoop(rayrun.CountingLoop):
    """The fault: in the actor's `batch`-th task, once half of it is written (the other writes still in
    flight), note the files written in `marker` and kill the actor's process. Once, whichever actor gets
    there first (the marker is created exclusively). Runs inside the actors: pickled by value (below)."""

    marker, batch, tasks = "", 0, 0  # set by the test; `tasks` counts this process's tasks

    def run(self, jobs) -> None:
        type(self).tasks += 1
        self.die_after = max(1, len(jobs) // 2) if type(self).tasks == self.batch else 0
        super().run(jobs)

    def collect_write(self) -> None:
        super().collect_write()
        if self.die_after and len(self.done) >= self.die_after:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return  # another actor got there first: only one dies
            lines = [f"{p}\t{os.stat(p).st_ino}" for p in self.written if isinstance(p, Path)]
            os.write(fd, "\n".join(lines).encode())
            os.close(fd)
            os._exit(1)


# The actors cannot import this test module: its classes travel to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_ray_run_equals_a_local_run_and_survives_a_killed_actor(cluster, tmp_path, monkeypatch):
    src = tmp_path / "in"
    make_images(src, 48)
    local = translate_paths([str(src)], tmp_path / "local", local_translator())
    assert (local.translated, local.failed) == (48, 1)

    marker = tmp_path / "killed.txt"
    # The first actor in its 2nd batch kills its process once half of that batch is written, once.
    DyingLoop.marker, DyingLoop.batch = str(marker), 2
    timeline = tmp_path / "timeline.tsv"
    monkeypatch.setenv(rayrun.TIMELINE, str(timeline))
    heard = Heard()
    s, facts = rayrun.translate_paths_ray([str(src)], tmp_path / "ray", tiny_generator(), FP32, RunOptions(),
                                          heard, rows_per_task=8, loop_class=DyingLoop)
    assert marker.exists(), "no actor was killed: the test tested nothing"
    assert (s.translated, s.failed, s.skipped, s.stopped) == (48, 1, 0, None)
    assert s.failures == local.failures  # same file, same reason
    assert abs(s.megapixels - local.megapixels) < 1e-9
    ray_out, local_out = outputs(tmp_path / "ray"), outputs(tmp_path / "local")
    assert sorted(ray_out) == sorted(local_out)
    assert not [k for k in ray_out if TMP_MARK in k]
    different = [k for k in local_out if ray_out[k] != local_out[k]]
    assert not different, f"not bitwise equal to the local run: {different[:5]}"
    # What the dead actor had written before dying was not written again by its retry.
    finished = [line for line in marker.read_text().splitlines() if line]
    assert finished, "the actor died before writing anything: not a mid-batch death"
    for line in finished:
        path, inode = line.split("\t")
        assert os.stat(path).st_ino == int(inode), f"{path} was rewritten"
    assert facts["actors"] >= 1 and facts["cpus_per_actor"] >= 1
    # The start-up timeline: the driver's moments and, from inside the actors, theirs.
    moments = [line.split("\t") for line in timeline.read_text().splitlines()]
    said = {what for _, who, what in moments}
    assert {"run called", "planned", "finished"} <= said, said
    # Each actor built its Translator on the thread that runs all its calls: torch work on two threads gives
    # libgomp two thread teams, and with more threads than cores its idle threads sleep (slower forwards).
    threads = {}
    for _, who, what in moments:
        if what.startswith("translator built (on ") or (what.startswith("batch ") and " begins (on " in what):
            threads.setdefault(who, []).append(what.split(" (on ", 1)[1][:-1])
    assert threads and all(len(t) >= 2 and len(set(t)) == 1 for t in threads.values()), threads
    assert any(who.startswith("actor ") for _, who, _ in moments)
    # What the progress bar says while no image moves: the actors starting, until the first results.
    said = [e for e in heard.events if e != "advance"]
    assert said[0] == "Ray: connecting" and "translating" in said, heard.events
    assert said.index(f"Ray: starting {facts['actors']} actor{'s' if facts['actors'] > 1 else ''}") \
        < said.index("translating"), said
    assert heard.events.index("translating") < heard.events.index("advance") and heard.events.count("translating") == 1
    monkeypatch.delenv(rayrun.TIMELINE)

    again, _ = rayrun.translate_paths_ray([str(src)], tmp_path / "ray", tiny_generator(), FP32, RunOptions())
    assert (again.translated, again.skipped, again.failed) == (0, 48, 1)


def test_cli_ray_summary_and_exit_code_match_the_local_run(cluster, tmp_path):
    src = tmp_path / "in"
    make_images(src, 6)
    model = tmp_path / "tiny.pth"
    torch.save(tiny_generator().state_dict(), model)
    common = ["-m", model, "--device", "cpu", "--precision", "fp32", "--json"]
    r_local = run_cli("run", src, "-o", tmp_path / "a", *common)
    r_ray = run_cli("run", src, "-o", tmp_path / "b", *common, "--ray", "--report", env={"RAY_ADDRESS": cluster})
    assert r_local.returncode == r_ray.returncode == 1, r_ray.stderr[-2000:]
    assert "Progress bars disabled" not in r_ray.stderr  # Ray Data's notice of a choice the CLI made
    a, b = json.loads(r_local.stdout), json.loads(r_ray.stdout)
    for key in ("translated", "skipped", "failed", "failures", "not_done", "stopped"):
        assert a[key] == b[key], key
    assert b["ray"]["actors"] >= 1
    ray_out = outputs(tmp_path / "b")
    # --report on Ray: the actors wrote the thumbnails, the driver the page.
    assert b["report"] == str(tmp_path / "b" / "report.html") and ray_out.pop("report.html")
    thumbs = [k for k in ray_out if k.startswith(".cyclebatch-report/")]
    assert len(thumbs) == 2 * 6
    ray_out = {k: v for k, v in ray_out.items() if k not in thumbs}
    assert sorted(outputs(tmp_path / "a")) == sorted(ray_out)
    # Bitwise against an in-process local run at the actor's thread count (the CLI's runs the machine's).
    translate_paths([str(src)], tmp_path / "c", local_translator())
    assert outputs(tmp_path / "c") == ray_out


def test_a_setting_the_actors_cannot_run_is_the_local_runs_one_line_error(cluster, tmp_path):
    """The actors build their Translator on their first call: its error comes back as the local run's line
    and exit code, not as Ray's traceback of a failed task, and nothing is written."""
    src = tmp_path / "in"
    make_images(src, 3)
    model = tmp_path / "tiny.pth"
    torch.save(tiny_generator().state_dict(), model)
    common = ["-m", model, "--device", "cpu", "--backend", "warp"]
    r_local = run_cli("run", src, "-o", tmp_path / "a", *common)
    r_ray = run_cli("run", src, "-o", tmp_path / "b", *common, "--ray", env={"RAY_ADDRESS": cluster})
    local_line = r_local.stderr.strip().splitlines()[-1]
    assert "unknown backend 'warp'" in local_line
    assert r_ray.returncode == r_local.returncode != 0 and r_ray.stderr.strip().splitlines()[-1] == local_line
    assert "Traceback" not in r_ray.stderr
    assert not (tmp_path / "b").exists() or not outputs(tmp_path / "b")


def test_ray_reads_and_writes_object_storage(cluster, tmp_path):
    s3fs = pytest.importorskip("s3fs")
    from s3local import options, s3_server

    src = tmp_path / "in"
    make_images(src, 8)
    local = translate_paths([str(src)], tmp_path / "local", local_translator())
    with s3_server() as endpoint:
        fs = s3fs.S3FileSystem(**options(endpoint))
        fs.mkdir("photos")
        fs.mkdir("results")
        fs.put(str(src) + "/", "photos/", recursive=True)
        s, _ = rayrun.translate_paths_ray(["s3://photos/"], "s3://results/run", tiny_generator(), FP32,
                                          RunOptions(storage_options=options(endpoint)))
        assert (s.translated, s.failed) == (8, 1)
        assert s.failures[0][0] == "s3://photos/part0/broken.jpg"
        fs.invalidate_cache()
        got = {k[len("results/run/"):]: v for k, v in fs.cat(fs.find("results/run")).items()}
    assert got == outputs(tmp_path / "local") and local.translated == 8


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CycleBatchError, match=r"pip install 'cyclebatch\[ray\]'"):
        rayrun._ray()
