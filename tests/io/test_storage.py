import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, tiny_generator, torch_threads
from cyclebatch.io import storage
from cyclebatch.engine.translator import Translator
from cyclebatch.errors import CycleBatchError
from cyclebatch.io.files import TMP_MARK
from cyclebatch.run.pipeline import RunOptions, translate_paths
from s3local import FAKE_CREDENTIALS, options, s3_server

s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture
def fs(endpoint, monkeypatch):
    for k, v in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    fs = s3fs.S3FileSystem(**options(endpoint))
    return fs


@pytest.fixture
def one_thread():
    """Tiny images, batch 1: torch's threads only add synchronisation (a lot of it on a loaded machine)."""
    with torch_threads(1):
        yield


def png_bytes(seed: int, size=(32, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_locations_keep_local_paths_local():
    from pathlib import Path

    assert storage.as_location("photos/a.jpg") == Path("photos/a.jpg")
    assert storage.as_location("file:///data/my%20photos") == Path("/data/my photos")
    assert storage.as_location("s3://bucket/photos/") == "s3://bucket/photos/"
    assert not storage.is_url("C:/photos") and storage.is_url("gs://b/x")


def test_missing_extra_names_the_package():
    with pytest.raises(CycleBatchError) as e:
        storage.list_files("gs://some-bucket/photos/")
    assert "pip install gcsfs" in str(e.value) and "\n" not in str(e.value)


def test_storage_options_must_be_a_json_object():
    assert storage.parse_options('{"endpoint_url": "http://h:1"}') == {"endpoint_url": "http://h:1"}
    for bad in ("[1, 2]", "{endpoint"):
        with pytest.raises(CycleBatchError, match="--storage-options"):
            storage.parse_options(bad)


def test_whole_object_writes_on_a_non_object_store_leave_no_temporary(tmp_path):
    # fsspec's "local" protocol is not an object store: the write goes to a temporary name, then moves.
    url = f"local://{tmp_path}/deep/a.bin"
    storage.write_bytes(url, b"x" * 1000)
    assert storage.read_bytes(url) == b"x" * 1000
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["a.bin"]


@pytest.mark.slow
def test_500_images_from_and_to_s3_match_a_local_run(fs, endpoint, tmp_path, one_thread):
    fs.mkdir("photos")
    n = 500
    fs.pipe({f"photos/set{i % 3}/{i:03d}.png": png_bytes(i) for i in range(n)})
    fs.pipe_file("photos/set0/broken.png", b"not a png")
    local_in = tmp_path / "in"
    for i in range(n):
        (local_in / f"set{i % 3}").mkdir(parents=True, exist_ok=True)
        (local_in / f"set{i % 3}" / f"{i:03d}.png").write_bytes(png_bytes(i))
    t = Translator(tiny_generator(), device="cpu", precision="fp32")
    opts = RunOptions(storage_options=options(endpoint))

    s = translate_paths(["s3://photos/"], "s3://photos-out/run1", t, opts)
    assert s.stopped and "bucket" in s.stopped and s.translated == 0  # no such bucket: one message, a stop
    fs.mkdir("photos-out")
    s = translate_paths(["s3://photos/"], "s3://photos-out/run1", t, opts)
    assert s.stopped is None
    assert (s.translated, s.failed, s.skipped) == (n, 1, 0)
    assert s.failures[0][0] == "s3://photos/set0/broken.png" and "not an image" in s.failures[0][1]
    local = translate_paths([str(local_in)], tmp_path / "out", t)
    assert local.translated == n

    fs.invalidate_cache()
    keys = sorted(fs.find("photos-out/run1"))
    assert len(keys) == n and not any(TMP_MARK in k for k in keys)
    remote = fs.cat(keys)
    total = 0
    for key, data in remote.items():
        rel = key[len("photos-out/run1/"):]
        assert data == (tmp_path / "out" / rel).read_bytes(), rel
        total += len(data)
    assert total == sum(p.stat().st_size for p in (tmp_path / "out").rglob("*.png"))

    # A re-run skips what exists (one listing), and rewrites nothing.
    before = {k: fs.info(k)["LastModified"] for k in keys}
    again = translate_paths(["s3://photos/"], "s3://photos-out/run1", t, opts)
    assert (again.translated, again.skipped) == (0, n)
    fs.invalidate_cache()
    assert {k: fs.info(k)["LastModified"] for k in keys} == before


def test_cli_reads_and_writes_urls_with_the_endpoint_from_the_environment(fs, endpoint, tmp_path):
    import torch

    fs.mkdir("clin")
    fs.mkdir("clout")
    fs.pipe({f"clin/{i}.png": png_bytes(100 + i) for i in range(3)})
    fs.pipe_file("clin/empty.jpg", b"")
    model = tmp_path / "tiny.pth"
    torch.save(tiny_generator().state_dict(), model)
    env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    r = run_cli("run", "s3://clin", "-o", "s3://clout/x/", "-m", model, "--device", "cpu", "--json", env=env)
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["translated"], summary["failed"]) == (3, 1)
    assert summary["failures"][0]["path"] == "s3://clin/empty.jpg"
    assert "empty" in summary["failures"][0]["reason"]
    fs.invalidate_cache()
    assert sorted(fs.ls("clout/x")) == [f"clout/x/{i}.png" for i in range(3)]
    for i in range(3):
        with Image.open(io.BytesIO(fs.cat(f"clout/x/{i}.png"))) as im:
            assert im.size == (32, 32)
    # A bad --storage-options is one line and exit code 2.
    r = run_cli("run", "s3://clin", "-o", "s3://clout/y/", "-m", model, "--storage-options", "[1]", env=env)
    assert r.returncode == 2 and "--storage-options" in r.stderr
