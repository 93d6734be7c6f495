"""The `cyclebatch` app: its commands (one module each), the entry point, and how help and errors read."""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import CycleBatchError
from . import distill, export, models, train, video
from .common import err, error_line, out
from .run import run


app = typer.Typer(
    help="Unpaired image-to-image translation with CycleGAN generators, at batch scale.",
    rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"cyclebatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    pass


# ---------------------------------------------------------------- the commands, in the help's order

app.add_typer(models.models_app, name="models")
app.command("run")(run)
app.command("train")(train.train_cmd)
app.command("distill")(distill.distill_cmd)
app.add_typer(train.runs_app, name="runs")
app.command("export")(export.export_cmd)
app.command("video")(video.video)


# ---------------------------------------------------------------- entry point

def _plain_metavars(typer_app: typer.Typer) -> None:
    """Help that reads as a user expects: a flag shows no `<bool>` as if it took a value, and the usage line
    names the arguments in capitals (`{INPUTS}...`: Typer's braces mark a required one). Set once on every command's declared parameters."""
    import inspect

    from typer.models import ArgumentInfo, OptionInfo

    apps = [typer_app]
    while apps:
        a = apps.pop()
        apps += [g.typer_instance for g in a.registered_groups]
        callbacks = [c.callback for c in a.registered_commands]
        if a.registered_callback is not None:
            callbacks.append(a.registered_callback.callback)
        for callback in callbacks:
            for p in inspect.signature(callback).parameters.values():
                info = p.default
                if isinstance(info, OptionInfo) and info.metavar is None and p.annotation in (bool, "bool"):
                    info.metavar = ""
                elif isinstance(info, ArgumentInfo) and info.metavar is None:
                    info.metavar = p.name.upper()  # Typer adds the "..." of a list itself


def main() -> None:
    _plain_metavars(app)
    if not err.is_terminal:
        # Typer boxes usage errors in a panel hard-wrapped at 80 columns; a log gets Click's plain lines.
        import typer.rich_utils

        typer.rich_utils.rich_format_error = lambda e: e.show()
    try:
        app(standalone_mode=True)
    except CycleBatchError as e:
        error_line(str(e))  # escaped: "pip install 'cyclebatch[openvino]'" is not markup
        sys.exit(1)
    except Exception as e:  # a case no code path foresaw: still one line; the traceback on request
        import os

        if os.environ.get("CYCLEBATCH_DEBUG"):
            raise
        if isinstance(e, OSError) and e.filename:
            error_line(f"{e.filename}: {e.strerror or e}")
        else:
            first = next((line for line in str(e).splitlines() if line.strip()), "")
            error_line(f"unexpected {type(e).__name__}{f': {first[:200]}' if first else ''} "
                       "(please report it; CYCLEBATCH_DEBUG=1 shows the traceback)")
        sys.exit(1)
