"""Headless Chromium for tests that read a page as a person would see it: the DOM after its scripts ran.

CI installs Debian's chromium (README, "Test"); where it is missing the browser tests skip and say why.
The flags keep Chromium off the network (this machine has none; without them it retries Google's hosts).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--hide-scrollbars"]

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="needs Debian's chromium (apt-get install chromium), as CI installs it")


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="cb-chromium-") as profile:
        proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def render(path: str | Path, fragment: str = "", timeout: float = 120) -> str:
    """The page's DOM, serialised after its scripts ran (what a person's browser would show)."""
    url = Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return _chromium(["--dump-dom", url], timeout).stdout


def screenshot(path: str | Path, png: str | Path, size: tuple[int, int] = (1280, 900), timeout: float = 120) -> Path:
    png = Path(png).resolve()
    _chromium([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", Path(path).resolve().as_uri()], timeout)
    if not png.is_file():
        raise AssertionError(f"chromium wrote no screenshot to {png}")
    return png


VOID = {"img", "input", "meta", "br", "hr", "link", "source", "area", "col", "embed", "wbr", "base", "track"}


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[list] = []  # [tag, attributes, text directly inside], in document order
        self.rows: list[tuple[dict, list[str]]] = []
        self._open: list[list] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        self.elements.append([tag, a, ""])
        if tag not in VOID:
            self._open.append(self.elements[-1])
        if tag == "tr" and "data-row" in a:
            self.rows.append((a, []))
        elif tag == "td" and self.rows and self._cell is None:
            self._cell = []
        elif tag == "img" and self._cell is not None:
            self._cell.append(f"[img {a.get('src', '')[:40]}]")

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            self._open.pop()
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._open:
            self._open[-1][2] += data
        if self._cell is not None:
            self._cell.append(data)

    def find(self, tag: str | None = None, **attrs) -> list[list]:
        """Elements by tag and attributes (data_shown=True: present; data_label="x": equal; _ stands for -)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [e for e in self.elements if (tag is None or e[0] == tag)
                and all((k in e[1]) if v is True else e[1].get(k) == v for k, v in want.items())]


def parse(dom: str) -> _Dom:
    """Elements [tag, attributes, text] in document order, and the rows of entries tables: (attributes, cell texts)."""
    d = _Dom()
    d.feed(dom)
    return d


def with_attr(dom: _Dom, name: str, tag: str | None = None) -> list[dict]:
    return [a for t, a, _ in dom.elements if name in a and (tag is None or t == tag)]
