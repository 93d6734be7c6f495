"""The `cyclebatch` command: a thin Typer layer over the library API, one module per command."""

from .app import app, main  # noqa: F401
