"""The `cyclebatch` command: a thin Typer layer over the library API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import CycleBatchError

app = typer.Typer(
    help="Unpaired image-to-image translation with CycleGAN generators, at batch scale.",
    rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="List, download, inspect and convert models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(f"cyclebatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    pass


# ---------------------------------------------------------------- models

def _fmt_size(n: Optional[int]) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


@models_app.command("list")
def models_list() -> None:
    """The zoo, dropped-in files and training runs: name, source, cached or not, size, direction."""
    from .registry import ZOO, cached_path, local_models

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
        table.add_row(name, "AtoB and BtoA" if kind == "run" else "-", f"{kind}: {path}", "local", _fmt_size(size))
    out.print(table)


@models_app.command("download")
def models_download(names: List[str] = typer.Argument(..., help="Zoo names or aliases."),
                    quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Download zoo models into the cache (verified, atomic; safe to interrupt and re-run)."""
    from .registry import ensure_cached, lookup

    failed = 0
    for name in names:
        w = lookup(name)
        if w is None:
            err.print(f"[bold red]error:[/] '{name}' is not a zoo name (see `cyclebatch models list`)")
            failed += 1
            continue
        try:
            path = ensure_cached(w, quiet=quiet)
            if not quiet:
                out.print(f"{w.name}: {path}")
        except CycleBatchError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            failed += 1
    raise typer.Exit(1 if failed else 0)


@models_app.command("info")
def models_info(model: str = typer.Argument(..., help="Zoo name, run name, folder or checkpoint file."),
                direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA.")) -> None:
    """Architecture, parameter count and metadata of a model."""
    from .registry import load_generator, resolve

    path = resolve(model, direction)
    net = load_generator(model, direction)
    n = sum(p.numel() for p in net.parameters())
    table = Table(show_header=False, box=None)
    table.add_row("file", str(path))
    table.add_row("architecture", f"{net.config.name}, ngf {net.config.ngf}, "
                  f"{net.config.in_channels}->{net.config.out_channels} channels, "
                  f"{'affine' if net.config.affine_norm else 'plain'} InstanceNorm, "
                  f"{'dropout' if net.config.dropout else 'no dropout'}")
    table.add_row("parameters", f"{n:,} ({n / 1e6:.3f} M)")
    for k, v in sorted(net.metadata.items()):
        if k not in ("architecture", "format", "format_version", "source"):
            table.add_row(k, str(v))
    out.print(table)


@models_app.command("convert")
def models_convert(src: str = typer.Argument(..., help="Any readable model: name, run, folder or file."),
                   dst: Path = typer.Argument(..., help="Output .safetensors file."),
                   direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output.")) -> None:
    """Write cyclebatch's own format (safetensors + JSON metadata) from any readable checkpoint."""
    from .checkpoints import save_generator
    from .registry import load_generator

    if dst.suffix != ".safetensors":
        fail(f"{dst}: the output must end in .safetensors", 2)
    if dst.exists() and not overwrite:
        fail(f"{dst}: exists; pass --overwrite to replace it")
    net = load_generator(src, direction)
    meta = {"direction": net.metadata.get("direction", direction), "converted_from": str(net.metadata.get("source", src))}
    save_generator(net, dst, meta)
    out.print(f"wrote {dst} ({net.config.name})")


# ---------------------------------------------------------------- export

@app.command("export")
def export_cmd(model: str = typer.Argument(..., help="Any model the registry can load: name, run, folder or file."),
               dst: Path = typer.Argument(..., help="Output file: .onnx (ONNX) or .pt (TorchScript)."),
               direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA."),
               fp16: bool = typer.Option(False, "--fp16", help="Half-precision weights and activations inside "
                                         "(float32 input and output stay)."),
               opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17).", show_default=False),
               no_verify: bool = typer.Option(False, "--no-verify", help="Skip running the file against PyTorch."),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output.")) -> None:
    """Export a generator for ONNX runtimes or LibTorch; verified against PyTorch on a real photo."""
    from .export import OPSET, export, format_of
    from .registry import load_generator

    try:
        fmt = format_of(dst)
    except CycleBatchError as e:
        fail(str(e), 2)
    if opset is not None and fmt != "onnx":
        fail(f"{dst}: --opset applies to .onnx outputs only", 2)
    if dst.exists() and not overwrite:
        fail(f"{dst}: exists; pass --overwrite to replace it")
    net = load_generator(model, direction)
    r = export(net, dst, fp16=fp16, opset=opset or OPSET, check=not no_verify, overwrite=overwrite, source=model)
    opset_note = f", opset {r.opset}" if r.opset else ""
    out.print(f"wrote {dst} ({net.config.name}, {r.precision}{opset_note}, "
              f"{dst.stat().st_size / 1e6:.1f} MB, {r.seconds:.1f} s)", highlight=False, soft_wrap=True)
    if r.verified:
        out.print(f"verified with {r.runtime} on {r.sample}: max |diff| {r.max_diff:.2e}, "
                  f"mean {r.mean_diff:.2e} (of the [0, 1] range)", highlight=False, soft_wrap=True)
    else:
        out.print("not verified (--no-verify)", highlight=False)


# ---------------------------------------------------------------- entry point

def main() -> None:
    try:
        app(standalone_mode=True)
    except CycleBatchError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
