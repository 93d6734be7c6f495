"""Hostile or broken download servers (all on 127.0.0.1): every one ends in a clear error or a correct
file, within limits of size and time, and never leaves a file a later run would trust."""

import http.server
import threading
import time

import pytest

from cyclebatch import CycleBatchError
from cyclebatch.models.download import fetch

BODY = bytes(range(256)) * 40


class Hostile(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        kind = self.path.strip("/")
        if kind.startswith("redirect-"):
            self.send_response(302)
            self.send_header("Location", {"redirect-ftp": "ftp://127.0.0.1/x.pth",
                                          "redirect-file": "file:///etc/passwd",
                                          "redirect-ok": "/plain"}[kind])
            self.end_headers()
            return
        self.send_response(200)
        if kind == "plain":
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif kind == "more-than-announced":
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY + b"\xff" * (1 << 20))
        elif kind == "huge-announced":
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
        elif kind in ("endless", "drip"):
            self.end_headers()  # no Content-Length: the body ends when the server closes, which it never does
            end = time.monotonic() + 20  # bounded, whatever the client does
            while time.monotonic() < end:
                try:
                    self.wfile.write(b"x" * (65536 if kind == "endless" else 1))
                    self.wfile.flush()
                except OSError:
                    return  # the client hung up: what the test wants
                if kind == "drip":
                    time.sleep(0.05)

    def log_message(self, *args):
        pass


@pytest.fixture
def host():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name not in ("work", "cbhome")]  # the test's own folders


def test_a_body_that_never_ends_stops_at_the_size_limit(host, tmp_path):
    with pytest.raises(CycleBatchError, match="more than the limit of 1,048,576 bytes"):
        fetch(f"{host}/endless", tmp_path / "m.pth", quiet=True, max_bytes=1 << 20)
    assert leftovers(tmp_path) == []


def test_a_server_that_drips_for_ever_stops_at_the_time_limit(host, tmp_path):
    started = time.monotonic()
    with pytest.raises(CycleBatchError, match="time limit"):
        fetch(f"{host}/drip", tmp_path / "m.pth", quiet=True, deadline_s=1.0)
    assert time.monotonic() - started < 5
    assert leftovers(tmp_path) == []


def test_an_announced_size_over_the_limit_is_refused_before_reading(host, tmp_path):
    with pytest.raises(CycleBatchError, match="announces 1,099,511,627,776 bytes"):
        fetch(f"{host}/huge-announced", tmp_path / "m.pth", quiet=True)
    assert leftovers(tmp_path) == []


def test_bytes_past_the_announced_length_are_never_read(host, tmp_path):
    fetch(f"{host}/more-than-announced", tmp_path / "m.pth", quiet=True)
    assert (tmp_path / "m.pth").read_bytes() == BODY


@pytest.mark.parametrize("kind, said", [("redirect-ftp", "refused its redirect to ftp://127.0.0.1/x.pth"),
                                        ("redirect-file", "file:///etc/passwd' is not allowed")])
def test_redirects_to_another_scheme_are_refused(host, tmp_path, kind, said):
    with pytest.raises(CycleBatchError, match=said):
        fetch(f"{host}/{kind}", tmp_path / "m.pth", quiet=True)
    assert leftovers(tmp_path) == []


def test_a_redirect_within_http_is_followed(host, tmp_path):
    fetch(f"{host}/redirect-ok", tmp_path / "m.pth", quiet=True)
    assert (tmp_path / "m.pth").read_bytes() == BODY
