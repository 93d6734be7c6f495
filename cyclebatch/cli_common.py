"""What every `cyclebatch` command shares: the consoles, one-line notes and errors, option help texts."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from .errors import CycleBatchError

out = Console()
err = Console(stderr=True)


PRECISION_HELP = ("auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), fp32 (true fp32, also on CUDA), "
                  "tf32 (CUDA tensor cores, fp32 storage), bf16, fp16. Outputs that overflow are re-run in fp32.")


def note(message: str) -> None:
    err.print(f"[yellow]note:[/] {message}", highlight=False)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_bytes(text: Optional[str]) -> Optional[int]:
    from .tiling import parse_memory

    try:
        return None if text is None else parse_memory(text)
    except CycleBatchError as e:
        fail(f"--max-memory: {e}", 2)


TILE_HELP = "Tile every image with tiles of this size (px); default: only images too big for --max-memory."
MEMORY_HELP = "Memory one image may take before it is tiled (6G, 512M); default: half of what is free."
BACKEND_HELP = ("What runs full-frame passes on the CPU: torch (cyclebatch's own engine), openvino "
                "(pip install 'cyclebatch[openvino]') or auto (the faster of the two on this CPU, per image size class; "
                "measured once and cached). Tiles and shared video statistics always run on torch.")
STATS_HELP = "Tile InstanceNorm statistics: exact (whole image, seamless) or per-tile (naive, for comparison)."
STORAGE_HELP = ("For s3:// gs:// ... URLs: fsspec options as JSON, e.g. '{\"endpoint_url\": \"http://host:9000\"}' "
                "(credentials come from the usual environment variables and files).")
BATCHNORM_HELP = ("BatchNorm models: running statistics (official test.py --eval) or per-image ones "
                  "(official test.py default).")


def _sigterm_as_interrupt() -> None:
    """Ctrl-C and SIGTERM both stop a run as an interrupt (exit 130, nothing half-written), and are noted
    for the loops to see even where a C callback swallowed the KeyboardInterrupt (errors.note_interrupt)."""
    import signal

    from .errors import note_interrupt

    def handler(signum, frame):
        note_interrupt()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
