"""Reading generator checkpoints safely, in any layout we know, and writing cyclebatch's own format.

Every path goes: raw tensors (never unpickling code) -> key adapters -> architecture read off the
keys -> strict load. Users never say `--netG` or `--norm`: the keys say it.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import CycleBatchError, first_line
from .networks import Generator, GeneratorConfig, make_generator

FORMAT = "cyclebatch-generator"
FORMAT_VERSION = 1
Tensors = dict[str, torch.Tensor]


# ---------------------------------------------------------------- raw reading

def read_tensors(path: str | Path) -> tuple[object, dict]:
    """Return (payload, metadata) of a .pth or .safetensors file; one-line CycleBatchError if unreadable."""
    path = Path(path)
    if path.is_dir():
        raise CycleBatchError(f"{path}: is a folder, not a checkpoint file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CycleBatchError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise CycleBatchError(f"{path}: empty file (0 bytes), not a checkpoint")
    # By name too: torch.load would pass a damaged .safetensors file on to a loader whose errors escape.
    if _looks_like_safetensors(head, size) or (path.suffix == ".safetensors" and not head.startswith(b"PK")):
        return _read_safetensors(path, head, size)
    if head.startswith(b"\x80") and not head.startswith(_LEGACY_TORCH_HEAD):
        # pickle.dump output, not torch.save's (a zip archive, or the legacy format's magic number first):
        # torch's restricted unpickler would only warn about the protocol and ask for a bug report.
        raise CycleBatchError(f"{path}: a plain Python pickle, not a PyTorch checkpoint (torch.save) or "
                              "safetensors file; cyclebatch never unpickles it, as a pickle can carry code")
    return _read_pth(path), {}


# What torch.save's legacy (pre-1.6, non-zip) format starts with: the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


MAX_HEADER = 100 << 20  # safetensors' own cap; a generator's header is a few kB


def _read_safetensors(path: Path, head: bytes, size: int) -> tuple[Tensors, dict]:
    from safetensors import safe_open

    # Checked here first, so a damaged length never reaches an allocation or another loader.
    if len(head) < 9:
        raise CycleBatchError(f"{path}: truncated safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > size - 8:
        raise CycleBatchError(f"{path}: corrupt safetensors file (its header claims {n:,} bytes; "
                              f"the file has {size:,})")
    if n > MAX_HEADER:
        raise CycleBatchError(f"{path}: corrupt safetensors file (a {n:,}-byte header)")
    if head[8:9] != b"{":
        raise CycleBatchError(f"{path}: corrupt safetensors file (its header is not a JSON object)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise CycleBatchError(f"{path}: corrupt or truncated safetensors file ({first_line(e, skip='Weights only load failed')})") from None
    meta = {}
    if "cyclebatch" in raw:
        try:
            meta = json.loads(raw["cyclebatch"])
        except json.JSONDecodeError:
            raise CycleBatchError(f"{path}: its cyclebatch metadata is not valid JSON") from None
    return tensors, meta


def _read_pth(path: Path) -> object:
    import pickle

    import warnings

    try:
        # weights_only=True: tensors and plain containers only; no pickled code ever runs. Its warnings
        # (pickle protocols, "please file an issue") are torch's notes to itself, not the user's business.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m:
            raise CycleBatchError(
                f"{path}: refused: the file carries Python code or objects ({m.group(1)}), not just tensors; "
                "cyclebatch never runs code from a checkpoint"
            ) from None
        raise CycleBatchError(f"{path}: not a PyTorch checkpoint, or corrupt ({first_line(e, skip='Weights only load failed')})") from None
    except (EOFError, RuntimeError, ValueError, OSError, AttributeError, IndexError, KeyError) as e:
        what = "truncated or corrupt" if isinstance(e, (EOFError, RuntimeError)) else "unreadable"
        raise CycleBatchError(f"{path}: {what} checkpoint ({first_line(e, skip='Weights only load failed') or type(e).__name__})") from None
    except Exception as e:  # torch.load hands some files to other loaders, which raise their own types
        raise CycleBatchError(f"{path}: unreadable checkpoint ({first_line(e, skip='Weights only load failed')})") from None


def check_finite(sd: Tensors, path: Path | str) -> None:
    """A NaN or infinite weight makes every output black or garbage: refuse the file, naming the tensor."""
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CycleBatchError(f"{path}: refused: tensor {k} holds {bad:,} NaN or infinite values "
                                  "(a broken checkpoint: every output would be garbage)")


# ---------------------------------------------------------------- layouts

# Where a file holds several networks (training checkpoints, wrappers), the generator per direction.
_CONTAINER_KEYS = {"AtoB": ("G_A", "netG_A", "generator_AtoB"), "BtoA": ("G_B", "netG_B", "generator_BtoA")}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "generator", "netG", "G", "params", "weights")


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(v, torch.Tensor) for k, v in obj.items() if k != "_metadata"
    )


def select_state_dict(payload: object, path: Path, direction: Optional[str] = None) -> Tensors:
    """Find the generator's tensors inside whatever container the file holds.

    direction None: the file's generator, whichever it is; "AtoB"/"BtoA": G_A/G_B of a file holding
    both, and for a file holding one generator, BtoA is refused (it would silently run the wrong way).
    """
    if _is_tensor_dict(payload):
        if direction == "BtoA":
            raise CycleBatchError(f"{path}: holds a single generator; --direction BtoA needs a model with "
                                  "both (a training run, or a folder with latest_net_G_A.pth and latest_net_G_B.pth)")
        return dict(payload)  # type: ignore[arg-type]
    if isinstance(payload, dict):
        for key in _CONTAINER_KEYS.get(direction or "AtoB", ()) + _WRAPPER_KEYS:
            if key in payload and _is_tensor_dict(payload[key]):
                return dict(payload[key])
    raise CycleBatchError(f"{path}: no generator weights found (the file holds {_describe(payload)})")


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(list(map(str, obj))[:5])
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def _common_cleanup(sd: Tensors) -> Tensors:
    """What the official loader also strips: DataParallel prefixes. (Running statistics stay until the
    architecture is known: BatchNorm needs them; InstanceNorm's are stale, see build_generator.)"""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items() if k != "_metadata"}


def _vintagify(sd: Tensors) -> Optional[Tensors]:
    """vintagify 0.1.2 names the residual branch `block` instead of `conv_block`."""
    if not any(".block." in k for k in sd):
        return None
    return {k.replace(".block.", ".conv_block."): v for k, v in sd.items()}


# Foreign layouts: each adapter returns renamed tensors, or None when the layout is not its own.
ADAPTERS: list[Callable[[Tensors], Optional[Tensors]]] = [_vintagify]


def to_official_keys(sd: Tensors) -> Tensors:
    sd = _common_cleanup(sd)
    for adapt in ADAPTERS:
        renamed = adapt(sd)
        if renamed is not None:
            return renamed
    return sd


def _norm_from_keys(sd: Tensors, norm: str, conv: str) -> dict:
    """norm, affine and conv bias from the keys at the first norm position and the conv before it.

    The official code gives convs a bias only with InstanceNorm; BatchNorm brings weight, bias and
    running statistics; InstanceNorm (affine=False) and `none` (nn.Identity) have no keys. Running
    statistics next to a biased conv are stale InstanceNorm buffers (pre-0.4 PyTorch saved them).
    """
    stats, bias, affine = f"{norm}.running_mean" in sd, f"{conv}.bias" in sd, f"{norm}.weight" in sd
    if stats and not bias:
        kind = "batch"
    elif bias or affine:  # affine without running statistics: per-sample statistics, i.e. InstanceNorm
        kind = "instance"
    else:
        kind = "none"
    return dict(norm=kind, affine_norm=affine, bias=None if bias == (kind == "instance") else bias)


def _unet_prefix(level: int) -> str:
    """Key prefix of U-Net level `level` (0 = outermost): each level sits at index 1 (outermost) or 3."""
    return "model.model." + "".join("1.model." if i == 0 else "3.model." for i in range(level))


def _infer_unet(sd: Tensors, path: Path | str) -> GeneratorConfig:
    first = sd["model.model.0.weight"]
    levels = 1
    while f"{_unet_prefix(levels)}1.weight" in sd:  # each inner level's down conv
        levels += 1
    last = sd.get("model.model.3.weight")
    if first.dim() != 4 or last is None or last.dim() != 4 or levels < 5:
        raise CycleBatchError(f"{path}: not an official U-Net generator ({levels} levels found, "
                              f"'model.model.3.weight' {'missing' if last is None else 'present'})")
    return GeneratorConfig(in_channels=first.shape[1], out_channels=last.shape[1], ngf=first.shape[0],
                           family="unet", n_downs=levels,
                           **_norm_from_keys(sd, "model.model.1.model.2", "model.model.0"))


def infer_config(sd: Tensors, path: Path | str = "checkpoint") -> GeneratorConfig:
    """Read the generator's architecture (ResNet or U-Net, norm, sizes) off its (official-named) keys."""
    if "model.model.0.weight" in sd:
        return _infer_unet(sd, path)
    first = sd.get("model.1.weight")
    if first is None or first.dim() != 4:
        raise CycleBatchError(f"{path}: not a CycleGAN generator (ResNet or U-Net): no 'model.1.weight' or "
                              f"'model.model.0.weight' conv; keys start {', '.join(list(sd)[:3])}")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
    if not blocks:
        raise CycleBatchError(f"{path}: not a ResNet generator (no residual blocks) nor an official U-Net")
    convs = [int(m.group(1)) for k, v in sd.items() if (m := re.match(r"model\.(\d+)\.weight$", k)) and v.dim() == 4]
    last = sd[f"model.{max(convs)}.weight"]
    dropout = any(k.endswith("conv_block.6.weight") and v.dim() == 4 for k, v in sd.items())
    return GeneratorConfig(
        in_channels=first.shape[1], out_channels=last.shape[0], ngf=first.shape[0],
        n_blocks=len(blocks), dropout=dropout, **_norm_from_keys(sd, "model.2", "model.1"),
    )


def build_generator(sd: Tensors, path: Path | str = "checkpoint", metadata: Optional[dict] = None) -> Generator:
    config = infer_config(sd, path)
    net = make_generator(config)
    if config.norm != "batch":  # what the official loader deletes: InstanceNorm buffers of old PyTorch
        sd = {k: v for k, v in sd.items() if not k.endswith(_RUNNING)}
    sd = {k: v.float() for k, v in sd.items()}
    _check_shapes(sd, net.state_dict(), config.name, path)
    result = net.load_state_dict(sd, strict=False)
    bad = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    if bad:
        raise CycleBatchError(f"{path}: keys do not fit a {config.name} generator ({'; '.join(bad[:3])}"
                              f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''})")
    net.metadata = dict(metadata or {})
    return net.eval().requires_grad_(False)


def _check_shapes(sd: Tensors, expected: Tensors, name: str, path: Path | str) -> None:
    """A tensor of the wrong shape (a damaged or hand-edited file, or another architecture's tensor under an
    official key) as one line: load_state_dict would raise a many-line RuntimeError."""
    bad = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in sd.items()
           if k in expected and v.shape != expected[k].shape]
    if bad:
        k, got, want = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CycleBatchError(f"{path}: tensor {k} has shape {list(got)} where a {name} generator needs "
                              f"{list(want)}{more}")


def load_file(path: str | Path, direction: Optional[str] = None) -> Generator:
    """Load a generator from one checkpoint file of any supported layout."""
    path = Path(path)
    payload, meta = read_tensors(path)
    if direction and meta.get("direction") and direction != meta["direction"]:
        raise CycleBatchError(f"{path}: translates {meta['direction']}, not {direction}")
    sd = to_official_keys(select_state_dict(payload, path, None if meta else direction))
    check_finite(sd, path)
    net = build_generator(sd, path, meta)
    net.metadata.setdefault("source", str(path))
    return net


# ---------------------------------------------------------------- own format

def save_generator(net: Generator, path: str | Path, metadata: Optional[dict] = None) -> Path:
    """Write safetensors weights with the architecture and `metadata` as JSON in the header."""
    from safetensors.torch import save

    from ..io.files import atomic_path

    path = Path(path)
    meta = {k: v for k, v in {**net.metadata, **(metadata or {})}.items() if k != "source"}
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, architecture=net.config.to_dict())
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    data = save(tensors, metadata={"cyclebatch": json.dumps(meta, sort_keys=True)})
    with atomic_path(path) as tmp:  # written by Python: a full disk is an OSError, not a SafetensorError
        tmp.write_bytes(data)
    return path
