"""The shared report page, read back from headless Chromium after its scripts ran."""

import numpy as np
from PIL import Image

from browser import needs_chromium, parse, render, with_attr
from cyclebatch.io.htmlpage import Page, data_uri, jpeg_thumbnail

pytestmark = needs_chromium


def _page(tmp_path, n_rows=250):
    thumb = data_uri(jpeg_thumbnail(np.full((40, 60, 3), 90, np.uint8)), "image/jpeg")
    page = Page("A report", "one line")
    page.table("Settings", [("model", "vintage"), ("precision", "bf16")])
    page.gallery("Samples", [{"label": f"epoch {e}", "src": thumb} for e in (3, 2, 1)])
    rows = [[f"in/{i:05d}.jpg", thumb if i % 2 else "", "failed" if i % 10 == 7 else "ok",
             "cannot identify image file" if i % 10 == 7 else ""] for i in range(n_rows)]
    page.entries("Images", ["file", "output", "status", "reason"], rows, image_columns=("output",), page_size=100)
    return page.write(tmp_path / "report.html")


def test_entries_show_one_page_of_rows_with_a_pager_and_open_at_a_linked_page_and_filter(tmp_path):
    path = _page(tmp_path)
    first = parse(render(path))
    assert [int(a["data-row"]) for a, _ in first.rows] == list(range(100))
    pager = with_attr(first, "data-pages")[0]
    assert (pager["data-page"], pager["data-pages"]) == ("1", "3")
    assert first.rows[1][1][1].startswith("[img data:image/jpeg")       # odd rows carry an output thumbnail
    assert first.rows[0][1][1] == "\u2014"                              # an empty image cell shows a dash

    last = parse(render(path, fragment="p=3"))
    assert [int(a["data-row"]) for a, _ in last.rows] == list(range(200, 250))
    assert with_attr(last, "data-pages")[0]["data-page"] == "3"

    failed = parse(render(path, fragment="q=failed"))
    assert len(failed.rows) == 25
    assert all(a["data-status"] == "failed" and cells[0].endswith("7.jpg") for a, cells in failed.rows)
    assert all(cells[3] == "cannot identify image file" for _, cells in failed.rows)


def test_gallery_shows_the_first_frame_and_lists_every_frame(tmp_path):
    dom = parse(render(_page(tmp_path, n_rows=1)))
    shown = with_attr(dom, "data-shown", "img")
    assert len(shown) == 1 and shown[0]["src"].startswith("data:image/jpeg") and shown[0]["alt"] == "epoch 3"
    assert with_attr(dom, "data-label")[0]["data-label"] == "epoch 3"
    assert [a["data-index"] for a in with_attr(dom, "data-index", "li")] == ["0", "1", "2"]
    kinds = [(a["data-kind"], a["data-heading"]) for a in with_attr(dom, "data-kind", "section")]
    assert kinds == [("table", "Settings"), ("gallery", "Samples"), ("entries", "Images")]


def test_text_from_files_is_shown_as_text_never_run_as_markup(tmp_path):
    evil = '</script><img src=x id=injected onerror="document.title=\'owned\'">'
    page = Page("t")
    page.table("Settings", [("name", evil)])
    page.entries("Images", ["file", "reason"], [[evil, evil]])
    dom = render(page.write(tmp_path / "p.html"))
    parsed = parse(dom)
    assert not parsed.find(id="injected")
    assert parsed.rows[0][1] == [evil, evil]
    assert "<title>t</title>" in dom


def test_thumbnails_are_small_and_keep_the_aspect_ratio():
    big = np.random.default_rng(0).integers(0, 255, (600, 900, 3), dtype=np.uint8)
    jpg = jpeg_thumbnail(big, longest=120)
    import io
    im = Image.open(io.BytesIO(jpg))
    assert im.size == (120, 80) and im.format == "JPEG"


def test_the_page_needs_nothing_outside_itself(tmp_path):
    text = _page(tmp_path, n_rows=3).read_text()
    for needle in ("http://", "https://", "<link", "src=\"/", "@import"):
        assert needle not in text
