"""The training run: setup, the epoch loop, samples and exports; Ctrl-C and SIGTERM end in a checkpoint.

step.py holds one iteration (networks, losses, precision), checkpoint.py saving and exact resume,
distributed.py the torchrun process group; what a person watches (losses.png, TensorBoard, status.json,
report.html) is written by report.py, board.py, status.py and page.py, from the main process only.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..models.checkpoints import save_generator
from ..errors import CycleBatchError
from ..io.files import os_error_behind, sweep_dead_temps
from ..models.networks import GeneratorConfig, PatchDiscriminator, ResnetGenerator, init_weights, make_generator
from .checkpoint import Checkpointing, check_run_folder, load_checkpoint, resume_point  # noqa: F401 (load_checkpoint: public here too)
from .config import TrainConfig
from .board import Board
from .failure import note, resume_command, stop_line, writing
from .data import UnpairedDataset, batches_per_epoch, grid_samples, make_loader, usable_images
from .distributed import group_initialized, join_group, leave_group, rank_info, training_device
from .pool import ImagePool
from .page import ReportPage
from .report import LOSS_NAMES, LossLog, Progress, missing_extras, save_grid
from .status import StatusWriter
from .step import Discriminators, Generators, NonFiniteLoss, TrainStep, autocast_dtype, grad_scaler, precision_name


@dataclass
class TrainResult:
    run_dir: Path
    epoch: int  # completed epochs
    iteration: int
    finished: bool
    interrupted: bool
    losses: dict
    skipped_images: int
    step_seconds: float = 0.0  # time inside train_step (model, losses, optimizers)
    loop_seconds: float = 0.0  # wall time of the measured iterations, everything included
    measured_iterations: int = 0
    epoch_end_seconds: float = 0.0  # samples, exports and checkpoints at epoch ends, in all
    exports: list = field(default_factory=list)

    def summary(self) -> str:
        """'stopped after 1 epoch, 6 iterations': the epochs that ended, the iterations that ran."""
        return (f"{'finished' if self.finished else 'stopped'} after {counted(self.epoch, 'epoch')}, "
                f"{counted(self.iteration, 'iteration')}")


def counted(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class StopRequest:
    """SIGINT / SIGTERM set a flag; the loop checkpoints and returns. A second Ctrl-C aborts at once."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self):
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class Trainer(TrainStep, Checkpointing):
    def __init__(self, config: TrainConfig, log=print, warn=None):
        self.rank, self.world, local_rank = rank_info()
        self.is_main = self.rank == 0
        self.log = log if self.is_main else (lambda *a, **k: None)
        self.warn = warn or self.log
        config.validate()
        self.run_dir = config.run_dir
        check_run_folder(self.run_dir)
        config, stored = resume_point(config)
        self.config = c = config

        self.device = training_device(c.device, self.world, local_rank)
        join_group(self.device, self.world)
        self.dtype = autocast_dtype(c.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        # data: validated before any network is built, so a bad folder fails in a second
        self.skipped = 0
        files_a, bad_a = usable_images(c.data_a, self.warn)
        files_b, bad_b = usable_images(c.data_b, self.warn)
        self.skipped = bad_a + bad_b
        self.bad_seen: set[str] = set()
        self.dataset = UnpairedDataset(files_a, files_b, c)
        self.domains = {"A": _domain_name(c.data_a), "B": _domain_name(c.data_b)}
        # the rows of the sample grids: held-out images when given, else the first training images
        self.samples, self.held_out = grid_samples(files_a, files_b, c, self.warn, resuming=stored is not None)

        torch.manual_seed(c.seed)
        G_A, G_B = self._generators(stored)
        D_A = init_weights(PatchDiscriminator(G_A.config.out_channels, c.ndf, c.d_layers))
        D_B = init_weights(PatchDiscriminator(G_A.config.in_channels, c.ndf, c.d_layers))
        identity = c.lambda_identity > 0 and G_A.config.in_channels == G_A.config.out_channels
        self.gens = Generators(G_A, G_B, identity).to(self.device).train()
        self.dis = Discriminators(D_A, D_B).to(self.device).train()
        betas = (c.beta1, 0.999)
        self.opt_G = torch.optim.Adam(self.gens.parameters(), lr=c.lr, betas=betas)
        self.opt_D = torch.optim.Adam(self.dis.parameters(), lr=c.lr, betas=betas)
        rule = lambda epoch: 1.0 - max(0, epoch + 1 - c.epochs) / float(c.decay_epochs + 1)  # noqa: E731
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, rule)
        self.scaler = grad_scaler(self.device, enabled=self.dtype == torch.float16)
        self.pool_A = ImagePool(c.pool_size, seed=_seed(c.seed, 1, self.rank))
        self.pool_B = ImagePool(c.pool_size, seed=_seed(c.seed, 2, self.rank))
        self.epoch = self.step = self.iteration = 0
        self.saved: Optional[tuple] = None  # (epoch, step, iteration) of checkpoints/latest.pt as it is on disk
        self.exports: list[Path] = []
        self.losses = LossLog(self.run_dir, c.log_every, enabled=self.is_main,
                              title=f"{c.name}: {self.domains['A']} <-> {self.domains['B']}")
        self.board: Board = None  # opened when the run starts (fit), by the main process
        self.status: StatusWriter = None
        self.page = ReportPage(self.run_dir)
        if stored is not None:
            self._restore(stored)
            self.losses.load(self.iteration)

        self.train_gens, self.train_dis = self.gens, self.dis
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_gens = DDP(self.gens, device_ids=ids)
            self.train_dis = DDP(self.dis, device_ids=ids)

    # ------------------------------------------------------------ setup helpers

    def _generators(self, stored: Optional[dict]) -> tuple[ResnetGenerator, ResnetGenerator]:
        c = self.config
        if stored is not None:  # resuming: the architecture is the checkpoint's (init_from may be gone by now)
            from ..models.checkpoints import infer_config

            return make_generator(infer_config(stored["G_A"])), make_generator(infer_config(stored["G_B"]))
        if not c.init_from:
            cfg = GeneratorConfig(ngf=c.ngf, n_blocks=c.n_blocks, dropout=c.dropout)
            return init_weights(ResnetGenerator(cfg)), init_weights(ResnetGenerator(cfg))
        from ..models.registry import load_generator, resolve

        G_A = load_generator(c.init_from, "AtoB")
        try:
            # A source with one generator (a zoo file) gives G_B a fresh start of the same architecture.
            single = resolve(c.init_from, "BtoA") == resolve(c.init_from, "AtoB")
            G_B = None if single else load_generator(c.init_from, "BtoA")
        except CycleBatchError:
            G_B = None
        if G_B is None:
            self.log(f"init from {c.init_from}: G_A loaded; the source has no B->A generator, G_B starts fresh")
            G_B = init_weights(make_generator(_swap_channels(G_A.config)))
        for net in (G_A, G_B):
            net.requires_grad_(True).train()
            net.metadata = {}
        return G_A, G_B

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 uint8 -> N x 3 x H x W in [-1, 1] on the device, NCHW in memory."""
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        # The permute leaves NHWC strides. Training runs NCHW on every device: CUDA's InstanceNorm and
        # reflection padding hand back NCHW, so channels_last would be converted back and forth in every
        # block, and on CPU it would send the no-grad sample forwards down the inference norm path.
        return x.contiguous()

    # ------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        with StopRequest() as stop:  # from the start: a signal during setup also ends in a checkpoint
            try:
                return self._fit(stop)
            except BaseException as e:
                # a full disk or a read-only folder: the run's end, said once, in status.json too
                line = stop_line(e, self.run_dir, self.saved, resume_command(self.config.name, self.config.runs_dir))
                self._write_status("failed", line or (str(e).splitlines()[0][:300] if str(e) else type(e).__name__))
                if line is None:
                    raise
                raise CycleBatchError(line) from None
            finally:
                if self.is_main:
                    sweep_dead_temps(self.run_dir)
                if self.board is not None:
                    self.board.close()

    def _fit(self, stop: StopRequest) -> TrainResult:
        c = self.config
        if self.is_main:
            sweep_dead_temps(self.run_dir)  # what a killed earlier attempt was writing (a checkpoint, say)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(self.run_dir / "config.json", {**c.to_dict(), "domains": self.domains, "world_size": self.world})
        n_batches = batches_per_epoch(len(self.dataset), c, self.world)
        workers = c.workers if c.workers >= 0 else min(4, os.cpu_count() or 1)
        pin = self.device.type == "cuda"
        step_s = loop_s = end_s = 0.0
        measured = 0
        progress = Progress(c.progress and self.is_main, c.total_epochs, n_batches)
        self.status = StatusWriter(self.run_dir, LOSS_NAMES, c.total_epochs, n_batches, c.max_iterations,
                                   enabled=self.is_main)
        if self.is_main:
            extras = missing_extras()
            if extras:
                self.log(extras)
            self.board = self.losses.board = Board(self.run_dir, self.iteration if c.resume else None)
            self.board.hparams({**c.to_dict(), "domain_A": self.domains["A"], "domain_B": self.domains["B"],
                                "world_size": self.world}, LOSS_NAMES)
        self.log(f"training {self.run_dir}: {len(self.dataset.a)} A images ({self.domains['A']}), "
                 f"{len(self.dataset.b)} B images ({self.domains['B']}), {n_batches} iterations per epoch, "
                 f"{counted(c.total_epochs, 'epoch')}, device {self.device}, precision {precision_name(self.dtype)}"
                 + (f", {self.world} processes" if self.world > 1 else ""))
        if self.epoch >= c.total_epochs:
            self.log(f"{self.run_dir}: already finished ({counted(self.epoch, 'epoch')})")
        interrupted = c.max_iterations is not None and self.iteration >= c.max_iterations
        with progress:
            while self.epoch < c.total_epochs and not interrupted:
                loader = make_loader(self.dataset, self.epoch, self.step, workers, pin, self.rank, self.world)
                progress.start_epoch(self.epoch, self.step)
                t_prev = None
                for batch in loader:
                    self._report_bad(batch.bad)
                    real_A, real_B = self.to_input(batch.a), self.to_input(batch.b)
                    t0 = time.perf_counter()
                    want_stop = stop.signal is not None or (
                        c.max_iterations is not None and self.iteration + 1 >= c.max_iterations)
                    try:
                        losses, stop_now = self.train_step(real_A, real_B, want_stop)
                    except NonFiniteLoss as e:
                        self.save_checkpoint()
                        raise CycleBatchError(
                            f"{self.run_dir}: non-finite loss ({e}) at epoch {self.epoch + 1}, iteration "
                            f"{self.iteration + 1}; stopped without applying that step. The weights before it are in "
                            f"{self.run_dir / 'checkpoints' / 'latest.pt'}; try a lower --lr or --precision fp32"
                        ) from None
                    t1 = time.perf_counter()
                    if t_prev is not None:  # the first batch of an epoch waits for fresh workers: not steady state
                        step_s += t1 - t0
                        loop_s += t1 - t_prev
                        measured += 1
                    t_prev = t1
                    self.step += 1
                    self.iteration += 1
                    lr = self.opt_G.param_groups[0]["lr"]
                    self.losses.add(self.iteration, self.epoch + 1, losses, lr)
                    self.status.iteration(self.epoch, self.step, self.iteration, losses, lr)
                    progress.advance(losses)
                    if stop_now:
                        interrupted = True
                        break
                    if self.iteration % c.latest_every == 0:
                        self.save_checkpoint()
                if interrupted and self.step < n_batches:
                    break  # stopped inside the epoch: it has not ended
                # An epoch whose last iteration ran is ended, also when a stop came with that iteration:
                # else its samples, plot and numbered checkpoint would be missing, and a resume would redo
                # its end one epoch late.
                t_end = time.perf_counter()
                self._end_epoch()
                end_s += time.perf_counter() - t_end
            if self.saved != (self.epoch, self.step, self.iteration):  # an epoch end just saved all this
                self.losses.flush(self.iteration, self.epoch + 1, self.opt_G.param_groups[0]["lr"])
                self.save_checkpoint()
                self.exports = self.export()
            exports = self.exports
        finished = self.epoch >= c.total_epochs
        self._write_status("finished" if finished else "stopped")
        self.write_report("finished" if finished else "stopped")
        if stop.signal is not None:
            self.log(f"stopped by {signal.Signals(stop.signal).name} at iteration {self.iteration}; "
                     f"continue with --resume")
        if self.skipped:
            self.warn(f"{self.skipped} image file(s) could not be read and were skipped")
        return TrainResult(self.run_dir, self.epoch, self.iteration, finished, stop.signal is not None,
                           self.losses.last(), self.skipped, step_s, loop_s, measured, end_s, exports)

    def _end_epoch(self) -> None:
        self.losses.flush(self.iteration, self.epoch + 1, self.opt_G.param_groups[0]["lr"])
        self.epoch += 1
        self.step = 0
        self.sched_G.step()
        self.sched_D.step()
        if self.is_main:
            self.save_samples()
        self.save_checkpoint(numbered=self.epoch % self.config.save_every == 0 or self.epoch == self.config.total_epochs)
        self.exports = self.export()
        self.write_report("training")
        self._write_status("training")
        self.status.pause()
        last = self.losses.last()
        self.log(f"epoch {self.epoch}/{self.config.total_epochs} done ({self.iteration} iterations): "
                 + "  ".join(f"{k} {v:.3f}" for k, v in last.items()))

    def _report_bad(self, messages: list[str]) -> None:
        for msg in messages:
            if msg not in self.bad_seen:
                self.bad_seen.add(msg)
                self.skipped += 1
                self.warn(f"skipping {msg}")

    # ------------------------------------------------------------ outputs

    @torch.no_grad()
    def save_samples(self) -> None:
        rows = []
        self.gens.eval()
        try:
            with self.autocast():
                for domain, img in self.samples:
                    x = self.to_input(img)
                    there, back = (self.gens.G_A, self.gens.G_B) if domain == "A" else (self.gens.G_B, self.gens.G_A)
                    y = there(x)
                    rows.append([x[0], y[0], back(y)[0]])
        finally:
            self.gens.train()
        if rows:
            grid = save_grid(self.run_dir / "samples" / f"epoch_{self.epoch:03d}.png", rows)
            if self.board is not None:
                self.board.image(self.epoch, grid)

    def write_report(self, state: str) -> None:
        """report.html from what is on disk now (main process only)."""
        if not self.is_main:
            return
        c = self.config
        progress = {"epoch": self.epoch, "epochs": c.total_epochs, "iteration": self.iteration, "state": state}
        self.page.write({**c.to_dict(), "world_size": self.world}, self.domains, progress, self.held_out)

    def _write_status(self, state: str, message: str = "") -> None:
        if self.status is not None and self.is_main:
            try:
                self.status.write(state, self.epoch, self.step, self.iteration, self.opt_G.param_groups[0]["lr"],
                                  message)
            except OSError:  # the status is a courtesy: a full disk is reported by what failed first
                pass

    def export(self) -> list[Path]:
        """G_A.safetensors (A->B) and G_B.safetensors (B->A) in the run folder: what `run NAME` loads."""
        if not self.is_main:
            return []
        c = self.config
        training = {"config": c.to_dict(), "epoch": self.epoch, "iterations": self.iteration,
                    "losses": self.losses.last(), "skipped_images": self.skipped}
        paths = []
        for net, direction, letter in ((self.gens.G_A, "AtoB", "A"), (self.gens.G_B, "BtoA", "B")):
            src, dst = (self.domains["A"], self.domains["B"]) if letter == "A" else (self.domains["B"], self.domains["A"])
            meta = {"direction": direction, "domains": self.domains, "input_size": c.crop_size,
                    "name": c.name, "translates": f"{src} -> {dst}", "training": training}
            path = self.run_dir / f"G_{letter}.safetensors"
            try:
                paths.append(save_generator(net, path, meta))
            except Exception as e:  # a full disk names no file in save_generator's error: name it here
                found = os_error_behind(e)
                if found is None:
                    raise
                raise note(found, path, measured_after_cleanup=True) from None
        return paths


def train(config: TrainConfig, log=print, warn=None) -> TrainResult:
    """Train (or, with config.resume, continue) a CycleGAN; returns where it stopped and why."""
    started_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not group_initialized()
    try:
        return Trainer(config, log, warn).fit()
    finally:
        if started_group and group_initialized():
            leave_group()


# ---------------------------------------------------------------- small helpers

def _swap_channels(cfg: GeneratorConfig) -> GeneratorConfig:
    return GeneratorConfig(**{**cfg.to_dict(), "in_channels": cfg.out_channels, "out_channels": cfg.in_channels})


def _domain_name(folder: str) -> str:
    return Path(folder).resolve().name or str(folder)


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + p + 12345) % (1 << 62)
    return h


def _write_json(path: Path, obj: dict) -> None:
    import json

    with writing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
