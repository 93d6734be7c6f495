"""Make the README's training figures from a real tiny run: docs/training-losses.png (the run's loss plot)
and docs/training-report.png (its report.html as headless Chromium shows it).

    python docs/make_training_figures.py        # a few minutes on 2 CPU cores; needs cyclebatch[train], chromium

The run: photos (A) against colour negatives of *other* photos (B), tiny networks, 64 px crops, the
first photos upside down as held-out images; the same task as tests/test_train_learning.py.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser import screenshot  # noqa: E402
from cyclebatch.train import TrainConfig, train  # noqa: E402


def main() -> None:
    photos = [Image.open(p).convert("RGB").resize((96, 64), Image.BICUBIC)
              for p in sorted((ROOT / "examples" / "photos").glob("*.[jp][pn]g"))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = {name: tmp / name for name in ("photos", "negatives", "val_photos", "val_negatives")}
        for f in folders.values():
            f.mkdir()
        for k, im in enumerate(photos):
            neg = Image.fromarray(255 - np.asarray(im))
            (im if k % 2 == 0 else neg).save(folders["photos" if k % 2 == 0 else "negatives"] / f"{k}.png")
            if k < 4:  # held out: upside down, so not a training image
                flipped = (im if k % 2 == 0 else neg).transpose(Image.FLIP_TOP_BOTTOM)
                flipped.save(folders["val_photos" if k % 2 == 0 else "val_negatives"] / f"{k}.png")
        for name in ("photos", "negatives"):
            for f in list(folders[name].iterdir()):
                for r in range(7):
                    os.link(f, folders[name] / f"{f.stem}_{r}.png")
        os.chdir(tmp)
        config = TrainConfig(str(folders["photos"]), str(folders["negatives"]), "photo2negative",
                             val_a=str(folders["val_photos"]), val_b=str(folders["val_negatives"]),
                             ngf=8, n_blocks=2, ndf=8, d_layers=2, load_size=72, crop_size=64, batch_size=2,
                             epochs=8, decay_epochs=4, lr=2e-3, lambda_identity=0.0, workers=0, log_every=2)
        result = train(config)
        print(f"{result.iteration} iterations, final losses {result.losses}")
        run = tmp / "runs" / "photo2negative"
        docs = ROOT / "docs"
        # 128 colours: the same pictures at a third of the bytes in the repository
        Image.open(run / "losses.png").convert("RGB").quantize(128).save(docs / "training-losses.png", optimize=True)
        shot = screenshot(run / "report.html", tmp / "shot.png", size=(1100, 1000))
        Image.open(shot).convert("RGB").quantize(128).save(docs / "training-report.png", optimize=True)
        for name in ("training-losses.png", "training-report.png"):
            print(docs / name, (docs / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
