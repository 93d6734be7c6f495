"""`cyclebatch run`: folders of images in, translated folders out (locally, under torchrun, or on Ray)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .common import (BACKEND_HELP, BATCHNORM_HELP, MEMORY_HELP, PRECISION_HELP, STATS_HELP, STORAGE_HELP,
                         TILE_HELP, _sigterm_as_interrupt, err, error_line, fail, note, out, parse_bytes, plain,
                         quoted)
from ..errors import CycleBatchError


class _ProgressReporter:
    """Rich progress with images/s and ETA on stderr; failures as one line each, above the bar."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.quiet = quiet
        # Not on a terminal (a log, a pipe): a bar there is noise (and its last frame, a stray blank line).
        self.progress = None if quiet or not err.is_terminal else Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            "[cyan]{task.fields[rate]}", TimeRemainingColumn(), console=err, transient=True)
        self.started, self.task = 0.0, None

    def status(self, text: str) -> None:
        if self.progress is None:
            return
        if self.task is None:  # before the count is known: a bar without a total
            self.progress.start()
            self.task = self.progress.add_task(text, total=None, rate="")
        else:
            self.progress.update(self.task, description=text)

    def start(self, total: int, skipped: int) -> None:
        import time

        self.started = time.perf_counter()
        if self.progress is not None:
            if self.task is None:
                self.status("translating")
            self.progress.update(self.task, total=total)
        if skipped and not self.quiet:
            err.print(f"skipping {skipped} image(s) whose output exists (--overwrite to redo them)")

    def advance(self, n: int = 1) -> None:
        import time

        if self.progress is not None:
            done = self.progress.tasks[0].completed + n
            rate = done / max(1e-9, time.perf_counter() - self.started)
            self.progress.update(self.task, advance=n, rate=f"{rate:.2f} img/s")

    def failure(self, path: str, reason: str) -> None:
        error_line(f"{quoted(path)}: {reason}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()



def run(
    inputs: List[str] = typer.Argument(..., help="Image files, folders (recursive) or globs ('photos/**/*.jpg')."),
    model: str = typer.Option("vintage", "--model", "-m", help="Zoo name, run name, folder or checkpoint file."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder or URL (s3://bucket/out/); the input tree is mirrored in it. \\[default: out]"),
    direction: str = typer.Option("AtoB", "--direction", "-d", help="AtoB or BtoA, for models holding both generators."),
    ext: Optional[str] = typer.Option(None, "--ext", help="Output format (jpg, png, webp, tif, bmp); default: the input's."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG / WebP quality."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that exist (otherwise skipped, so a re-run resumes)."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Write input|output comparisons."),
    max_size: Optional[int] = typer.Option(None, "--max-size", min=4, help="Working resolution: longest side at most this (output at that size)."),
    scale: Optional[float] = typer.Option(None, "--scale", min=0.01, max=8.0, help="Working resolution as a factor (output at that size)."),
    max_pixels: int = typer.Option(400_000_000, "--max-pixels", min=1, help="Refuse images over this many pixels (read from the header)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Images per forward pass; default from free memory."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the generator (pays off on long runs)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: translate only the K-th of N shares (0-based), for job arrays."),
    workers: int = typer.Option(0, "--workers", min=0, help="Decode/encode threads (0: automatic)."),
    tile: Optional[int] = typer.Option(None, "--tile", min=32, help=TILE_HELP),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MEMORY_HELP),
    tile_stats: str = typer.Option("exact", "--tile-stats", help=STATS_HELP),
    batchnorm: str = typer.Option("running", "--batchnorm", help=BATCHNORM_HELP),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary; errors only."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help=STORAGE_HELP),
    use_ray: bool = typer.Option(False, "--ray", help="Run on a Ray cluster (pip install 'cyclebatch\\[ray]'): --ray-address, RAY_ADDRESS, a running local one, or a new local one."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (default: RAY_ADDRESS); 'local': a new local cluster, even where one runs."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", min=0.0, help="GPUs per Ray actor (0.5: two actors share a GPU); 0: CPU actors."),
    ray_cpus: Optional[int] = typer.Option(None, "--ray-cpus", min=1, help="CPUs (threads) per Ray actor; default: a node's cores for CPU actors, 1 for GPU actors."),
    report: bool = typer.Option(False, "--report", help="Write OUT/report.html: input|output thumbnails, failures, timings, settings."),
) -> None:
    """Translate a folder of images: batched, size-preserving, resumable, and safe for your files."""
    from ..io.discover import check_output_location, parse_shard

    # The options are checked before torch is imported (2-3 s): a mistyped one answers at once.
    if direction not in ("AtoB", "BtoA"):
        fail(f"--direction must be AtoB or BtoA, not '{direction}'", 2)
    if ext is not None:
        ext = "." + ext.lower().lstrip(".")
        from ..io.images import IMAGE_SUFFIXES

        if ext not in IMAGE_SUFFIXES:
            fail(f"--ext {ext[1:]}: not a format cyclebatch writes ({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))})", 2)
    try:
        shard_kn = parse_shard(shard)
    except CycleBatchError as e:
        fail(str(e), 2)
    from ..io.storage import as_location, parse_options

    try:
        fs_options = parse_options(storage_options)
    except CycleBatchError as e:
        fail(str(e), 2)
    memory = parse_bytes(max_memory)
    out_dir = as_location(output) if output is not None else Path("out")
    if isinstance(out_dir, Path):
        try:
            check_output_location(inputs, out_dir, explicit=output is not None)
        except CycleBatchError as e:
            fail(str(e), 2)
    _check_inputs_exist(inputs)
    _sigterm_as_interrupt()
    if use_ray and shard:
        fail("--shard and --ray do not mix: Ray balances the whole file list over its actors by itself", 2)
    from ..run.distributed import gather, setup
    from ..engine.translator import Translator
    from ..run.pipeline import RunOptions, Summary, translate_paths
    from ..models.registry import load_generator

    if use_ray:
        _run_ray(inputs, out_dir, model, direction, json_out, quiet, ray_address, ray_gpus, ray_cpus, report,
                 dict(device=device, precision=precision, compile=compile, batch_size=batch_size, tile=tile,
                      max_memory=memory, tile_stats=tile_stats, batchnorm=batchnorm,
                      backend=backend),
                 RunOptions(ext=ext, quality=quality, overwrite=overwrite, side_by_side=side_by_side,
                            max_pixels=max_pixels, max_size=max_size, scale=scale, workers=workers,
                            storage_options=fs_options, report=report,
                            report_settings=_report_settings(model, direction, batch_size, tile, ext, quality,
                                                             side_by_side)))
    rank_shard, device = setup(device)
    if shard_kn is not None:  # job array shard, then (under torchrun) split again by rank
        k, n = shard_kn
        rank_shard = (k * rank_shard[1] + rank_shard[0], n * rank_shard[1])
    is_main = rank_shard[0] == 0 or shard_kn is not None
    if report and rank_shard[1] > 1:
        fail("--report covers a whole run: use it with a plain or a --ray run, not with --shard or torchrun", 2)
    translator = Translator(load_generator(model, direction, quiet=quiet or json_out), device, precision,
                            compile=compile, batch_size=batch_size, tile=tile,
                            max_memory=memory, tile_stats=tile_stats, batchnorm=batchnorm,
                            notify=note, backend=backend, adapt_threads=True)
    opts = RunOptions(ext=ext, quality=quality, overwrite=overwrite, side_by_side=side_by_side,
                      max_pixels=max_pixels, max_size=max_size, scale=scale, shard=rank_shard, workers=workers,
                      storage_options=fs_options, report=report,
                      report_settings=_report_settings(model, direction, batch_size, tile, ext, quality, side_by_side))
    reporter = _ProgressReporter(quiet=quiet or json_out or not is_main)
    try:
        summary = translate_paths(inputs, out_dir, translator, opts, reporter)
    except KeyboardInterrupt:
        err.print("[bold yellow]interrupted:[/] finished images are kept, no partial file was left; "
                  "run the same command again to resume")
        raise typer.Exit(130)
    parts = gather(summary)
    if parts is None:  # not rank 0: rank 0 reports for everyone
        raise typer.Exit(0 if summary.failed == 0 and not summary.stopped else 1)
    total = Summary.combine(parts)
    _finish(total, out_dir, report, json_out, quiet,
            {"model": model, "device": str(translator.device), "precision": translator.precision},
            f"{translator.device} {translator.precision}{_backends_note(total.backends)}")


def _check_inputs_exist(inputs: List[str]) -> None:
    """When no input exists, say so before the model loads (seconds): a mistyped folder answers at once.
    Where only some are missing, the run goes on and reports them with the other failures."""
    import glob
    import os

    from ..io.storage import as_location

    missing = [i for i in inputs if isinstance(as_location(i), Path) and not glob.has_magic(i)
               and not os.path.lexists(os.path.expanduser(i))]
    if missing and len(missing) == len(inputs):
        for item in missing:
            error_line(f"{quoted(item)}: no such file or folder")
        raise typer.Exit(1)


def _finish(total, out_dir, report: bool, json_out: bool, quiet: bool, facts: dict, where: str) -> None:
    """The end of a run, local or Ray: the summary (or --json), the report's place, the exit code."""
    import json

    if total.ignored and not json_out:
        kinds = ", ".join(f"{n} {s[1:].upper()}" for s, n in sorted(total.ignored.items()))
        note(f"left alone in the input folders: {kinds} (formats run does not read; an animated GIF goes "
             "through `cyclebatch video IN.gif OUT.gif`)")
    if json_out:
        out.print_json(json.dumps({**total.to_dict(), **facts, "output": str(out_dir), **_report_key(out_dir, report)}))
    elif not quiet:
        err.print(f"translated {total.translated}, skipped {total.skipped}, failed {total.failed} "
                  f"in {total.seconds:.1f} s ({total.images_per_second:.2f} images/s, "
                  f"{total.megapixels / max(total.seconds, 1e-9):.2f} MP/s) on {plain(where)} -> {plain(out_dir)}",
                  highlight=False)
        if report:
            err.print(f"report: {plain(_report_key(out_dir, report)['report'])}", highlight=False)
    if total.stopped:
        error_line(f"{total.stopped} ({total.not_done} images not translated)")
    raise typer.Exit(0 if total.failed == 0 and not total.stopped else 1)


def _report_key(out_dir, report: bool) -> dict:
    if not report:
        return {}
    from ..run.report import PAGE
    from ..io.storage import join

    return {"report": join(out_dir, PAGE) if isinstance(out_dir, str) else str(out_dir / PAGE)}


def _report_settings(model, direction, batch_size, tile, ext, quality, side_by_side) -> dict:
    return {"model": model, "direction": direction, "batch size": batch_size or "auto", "tile": tile or "auto",
            "output format": ext or "as the input", "quality": quality, "side by side": side_by_side,
            "command": " ".join(sys.argv[1:])}


def _run_ray(inputs, out_dir, model, direction, json_out, quiet, address, gpus, cpus, report, translator_kwargs,
             opts) -> None:
    """`run --ray`: the same plan, summary, --json and exit codes as a local run, on a Ray cluster."""
    from ..run.rayrun import translate_paths_ray
    from ..models.registry import load_generator

    if translator_kwargs["device"] == "auto" and not gpus:
        translator_kwargs["device"] = "cpu"  # CPU actors: a node's GPU belongs to GPU actors
    generator = load_generator(model, direction, quiet=quiet or json_out)
    reporter = _ProgressReporter(quiet=quiet or json_out)
    try:
        # Each Ray task's images go through the actor's pipeline, which fills and drains once per task:
        # several model batches per task keep the drain small.
        rows = max(32, 4 * (translator_kwargs["batch_size"] or 0))
        total, facts = translate_paths_ray(inputs, out_dir, generator, translator_kwargs, opts, reporter,
                                           address=address, gpus=gpus, cpus=cpus, rows_per_task=rows)
    except KeyboardInterrupt:
        err.print("[bold yellow]interrupted:[/] finished images are kept, no partial file was left; "
                  "run the same command again to resume")
        raise typer.Exit(130)
    except CycleBatchError as e:
        fail(str(e))
    device = translator_kwargs["device"] if not gpus else "cuda"
    _finish(total, out_dir, report, json_out, quiet,
            {"model": model, "device": device, "precision": translator_kwargs["precision"], "ray": facts},
            f"Ray ({facts['actors']} actors, {facts['cluster']}, startup {facts['startup_seconds']:.1f} s)")

def _backends_note(backends: dict) -> str:
    """' via openvino bf16 (12), torch bf16 (tiled) (1)': which engine ran how many images."""
    if not backends:
        return ""
    return " via " + ", ".join(f"{k} ({v})" for k, v in sorted(backends.items(), key=lambda kv: -kv[1]))
