"""runs/NAME/report.html: the run on one self-contained page (the shared htmlpage machinery): the sample
grid of every epoch, newest first, with a slider and a list to go back (GANs are judged by their pictures),
the loss plot, the settings.

Grids travel inside the page as JPEG data URIs (the page opens from the file system and can be mailed
around); each epoch's is encoded once and kept, so rewriting the page at every epoch end stays cheap.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from PIL import Image

from ..io.htmlpage import Page, data_uri
from .failure import writing

GRID_LONGEST = 768  # px: sharp enough to judge a 256 px crop, ~100 KB an epoch
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.png$")


class ReportPage:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / "report.html"
        self._grids: dict[tuple[int, float], str] = {}  # (epoch, file mtime) -> data URI

    def _grid_uri(self, epoch: int, path: Path) -> str:
        key = (epoch, path.stat().st_mtime)
        if key not in self._grids:
            self._grids[key] = data_uri(_grid_jpeg(path), "image/jpeg")
        return self._grids[key]

    def write(self, config: dict, domains: dict, progress: dict, held_out: bool) -> Path:
        """Rebuild the page from what is on disk now: losses.png and samples/epoch_NNN.png."""
        name = config.get("name", self.run_dir.name)
        subtitle = (f"{domains['A']} <-> {domains['B']}; epoch {progress['epoch']} of {progress['epochs']}, "
                    f"iteration {progress['iteration']}; {progress['state']}, updated "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        page = Page(f"cyclebatch training run {name}", subtitle=subtitle)
        grids = [(int(m.group(1)), p) for p in (self.run_dir / "samples").glob("epoch_*.png")
                 if (m := _EPOCH_FILE.search(p.name))]
        frames = []
        for epoch, path in sorted(grids, reverse=True):  # newest first: what a reader opens the page for
            try:
                frames.append({"label": f"epoch {epoch}", "src": self._grid_uri(epoch, path)})
            except OSError:  # a grid file gone or damaged: the page shows the others
                continue
        what = "held-out images" if held_out else "fixed training images, centre crops"
        page.gallery(f"Samples: {what}; columns real | translated | reconstructed, A rows first", frames)
        plot = self.run_dir / "losses.png"
        if plot.is_file():
            page.image("Losses", data_uri(plot.read_bytes(), "image/png"), alt="loss plot")
        else:
            page.text("Losses", ["No loss plot yet (it needs two logged rows and matplotlib: "
                                 "pip install 'cyclebatch[train]')."])
        page.table("Configuration", [(k, "" if v is None else v) for k, v in config.items()]
                   + [("domain A", domains["A"]), ("domain B", domains["B"])])
        with writing(self.path) as tmp:  # as Page.write does, with the free space noted on a failure
            tmp.write_text(page.html(), encoding="utf-8")
        return self.path


def _grid_jpeg(path: Path) -> bytes:
    """A grid as JPEG without chroma subsampling (4:4:4): a GAN's colour artefacts are a pixel wide, and
    the usual 4:2:0 would smear exactly what a reader looks for."""
    im = Image.open(path).convert("RGB")
    im.thumbnail((GRID_LONGEST, GRID_LONGEST), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, subsampling=0)
    return buf.getvalue()
