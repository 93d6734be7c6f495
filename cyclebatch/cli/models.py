"""`cyclebatch models ...`: list, download, inspect and convert models."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..errors import CycleBatchError
from .common import check_output_file, error_line, fail, out, plain, writing


models_app = typer.Typer(help="List, download, inspect and convert models.", no_args_is_help=True)


def _fmt_size(n: Optional[int]) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


@models_app.command("list")
def models_list() -> None:
    """The zoo, dropped-in files and training runs: name, source, cached or not, size, direction."""
    from ..models.registry import ZOO, cached_path, local_models

    table = Table(title="cyclebatch models", title_justify="left")
    for col in ("name", "translates", "source", "cached", "size"):
        table.add_column(col)
    for w in ZOO:
        p = cached_path(w)
        name = w.name + (f" ({', '.join(w.aliases)})" if w.aliases else "")
        size = p.stat().st_size if p.exists() else w.size
        table.add_row(name, w.translates, w.source, "yes" if p.exists() else "no", _fmt_size(size))
    for name, path, kind in local_models():
        size = path.stat().st_size if path.is_file() else None
        table.add_row(plain(name), "AtoB and BtoA" if kind == "run" else "-", f"{kind}: {plain(path)}", "local",
                      _fmt_size(size))
    out.print(table)


@models_app.command("download")
def models_download(names: List[str] = typer.Argument(..., help="Zoo names or aliases."),
                    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress; errors only.")) -> None:
    """Download zoo models into the cache (verified, atomic; safe to interrupt and re-run)."""
    from ..models.registry import ensure_cached, lookup

    failed = 0
    for name in names:
        w = lookup(name)
        if w is None:
            error_line(f"'{name}' is not a zoo name (see `cyclebatch models list`)")
            failed += 1
            continue
        try:
            path = ensure_cached(w, quiet=quiet)
            if not quiet:
                out.print(f"{w.name}: {plain(path)}", highlight=False)
        except CycleBatchError as e:
            error_line(str(e))
            failed += 1
    raise typer.Exit(1 if failed else 0)


@models_app.command("info")
def models_info(model: str = typer.Argument(..., help="Zoo name, run name, folder or checkpoint file."),
                direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA.")) -> None:
    """Architecture, parameter count and metadata of a model."""
    from ..models.registry import load_generator, resolve

    path = resolve(model, direction)
    net = load_generator(model, direction)
    n = sum(p.numel() for p in net.parameters())
    table = Table(show_header=False, box=None)
    table.add_row("file", plain(path))
    table.add_row("architecture", net.config.describe())
    table.add_row("parameters", f"{n:,} ({n / 1e6:.3f} M)")
    for k, v in sorted(net.metadata.items()):
        if k == "distilled" and isinstance(v, dict):
            table.add_row("distilled", plain(distilled_line(v)))
        elif k not in ("architecture", "format", "format_version", "source"):
            table.add_row(plain(k), plain(v))
    out.print(table)


def distilled_line(d: dict) -> str:
    """A student's provenance in one line: teacher, its sha256, the size and the fidelity measured."""
    t, f = d.get("teacher", {}), d.get("fidelity", {})
    return (f"{d.get('size', '?')} student of {t.get('model', '?')} (sha256 {str(t.get('sha256', '?'))[:16]}...): "
            f"1/{d.get('macs_ratio', '?')} of its MACs, 1/{d.get('params_ratio', '?')} of its parameters; "
            f"held-out PSNR {f.get('psnr_db', '?')} dB, SSIM {f.get('ssim', '?')} to it "
            f"({d.get('held_out_photos', '?')} photos)")


@models_app.command("convert")
def models_convert(src: str = typer.Argument(..., help="Any readable model: name, run, folder or file."),
                   dst: Path = typer.Argument(..., help="Output .safetensors file."),
                   direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output.")) -> None:
    """Write cyclebatch's own format (safetensors + JSON metadata) from any readable checkpoint."""
    from ..models.checkpoints import save_generator
    from ..models.registry import load_generator

    if dst.suffix != ".safetensors":
        fail(f"{dst}: the output must end in .safetensors", 2)
    check_output_file(dst, overwrite)
    net = load_generator(src, direction)
    meta = {"direction": net.metadata.get("direction", direction), "converted_from": str(net.metadata.get("source", src))}
    with writing(dst):
        save_generator(net, dst, meta)
    out.print(f"wrote {plain(dst)} ({net.config.name})", highlight=False)
