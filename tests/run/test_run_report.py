import time
from pathlib import Path

import torch
from PIL import Image

from browser import needs_chromium, parse, render, with_attr
from conftest import PHOTOS, run_cli, tiny_generator
from cyclebatch.io.discover import Job, Plan
from cyclebatch.run.pipeline import Summary
from cyclebatch.run import report
from cyclebatch.run.report import PAGE, THUMBS, thumb_rel, write_run_report


def images_rows(dom):
    """Rows of the Images table (the only one with a status column)."""
    return [(a, cells) for a, cells in dom.rows if "data-status" in a]


@needs_chromium
def test_report_of_a_real_run_shows_thumbnails_failures_and_settings(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photos = sorted(PHOTOS.glob("*.jpg"))[:3]
    for i, p in enumerate(photos):
        Image.open(p).convert("RGB").resize((48 + 8 * i, 40)).save(src / ("sub" if i else ".") / f"p{i}.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    model = tmp_path / "tiny.pth"
    torch.save(tiny_generator().state_dict(), model)
    out = tmp_path / "out"
    r = run_cli("run", src, "-o", out, "-m", model, "--device", "cpu", "--report")
    assert r.returncode == 1 and f"report: {out / PAGE}" in r.stderr, r.stderr

    dom = parse(render(out / PAGE))
    rows = images_rows(dom)
    assert len(rows) == len(photos) + 1
    by_status = {}
    for a, cells in rows:
        by_status.setdefault(a["data-status"], []).append(cells)
    assert len(by_status["translated"]) == len(photos) and len(by_status["failed"]) == 1
    failed = by_status["failed"][0]
    assert failed[2].endswith("broken.png") and "not an image" in failed[5]
    # Each translated row shows two thumbnails that exist beside the page, small JPEGs.
    imgs = [a["src"] for t, a, _ in dom.elements if t == "img" and a.get("src", "").startswith(THUMBS)]
    assert len(imgs) == 2 * len(photos)
    for rel in imgs:
        with Image.open(out / rel) as im:
            assert im.format == "JPEG" and max(im.size) <= 160
    headings = [a["data-heading"] for a in with_attr(dom, "data-heading", "section")]
    assert {"Timings", "Model and settings", "Failures", "Images"} <= set(headings)
    text = render(out / PAGE)
    assert str(model) in text and ("fp32" in text or "bf16" in text)
    # The thumbnails never become inputs of a run that reads the output folder.
    r2 = run_cli("run", out, "-o", tmp_path / "again", "-m", model, "--device", "cpu", "--json")
    assert '"translated": 3' in r2.stdout, r2.stdout


@needs_chromium
def test_a_100000_entry_report_opens_with_one_page_of_rows_in_the_dom(tmp_path, monkeypatch):
    n = 100_000
    jobs = [Job(Path(f"/data/in/{i // 1000:03d}/frame_{i:06d}.png"), Path(f"/data/out/{i // 1000:03d}/frame_{i:06d}.png"))
            for i in range(n)]
    failures = [(str(jobs[i].src), f"corrupt or truncated image (case {i})") for i in range(0, n, 5000)]
    summary = Summary(translated=n - len(failures), failed=len(failures), seconds=1234.5, megapixels=n * 2.0,
                      failures=failures)
    # As if every thumbnail had been written: 200,000 relative URLs in the page (the files need not exist).
    monkeypatch.setattr(report, "_existing_thumbs",
                        lambda root, options: {thumb_rel(j.src, w) for j in jobs for w in ("in", "out")})
    start = time.perf_counter()
    page = write_run_report(tmp_path, Plan(jobs, [], []), summary, {"model": "vintage"}, {})
    built = time.perf_counter() - start
    assert page.stat().st_size < 40e6 and built < 30

    start = time.perf_counter()
    dom = parse(render(page, fragment="p=500"))
    seconds = time.perf_counter() - start
    assert seconds < 60, f"rendering took {seconds:.0f} s"
    rows = images_rows(dom)
    assert len(rows) == 100  # one page of rows in the DOM, not 100,000
    pagers = [a for a in with_attr(dom, "data-pages") if a["data-pages"] == "1000"]
    assert pagers and pagers[0]["data-page"] == "500"
    assert rows[0][1][2] == str(jobs[49_900].src)
    assert rows[0][1][0].startswith(f"[img {THUMBS}/")  # the thumbnails of that page only
