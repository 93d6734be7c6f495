"""TensorBoard events in runs/NAME/tensorboard: the losses and learning rate as scalars, the sample grid
of every epoch as an image, the settings as hyperparameters. Optional (`pip install cyclebatch[train]`)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Optional

import numpy as np

LOSS_TAG = "loss/{}"
LR_TAG = "lr"
SAMPLES_TAG = "samples"


def have_tensorboard() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:  # torch's writer needs the tensorboard package
        return False
    return True


class Board:
    """A SummaryWriter, or nothing when tensorboard is missing. A resumed run purges what a killed
    attempt logged past its checkpoint, so the curves have no doubled stretch.

    A write that fails (a full disk) is raised here as an OSError naming the events folder, once: the
    writer's own thread would otherwise print a traceback of its own first."""

    def __init__(self, run_dir: Path, resume_iteration: Optional[int] = None):
        self.writer = None
        self.folder = run_dir / "tensorboard"
        if not have_tensorboard():
            return
        from torch.utils.tensorboard import SummaryWriter

        _quiet_writer_threads()
        purge = resume_iteration + 1 if resume_iteration else None
        with self._failing():
            self.writer = SummaryWriter(str(self.folder), purge_step=purge)

    @contextlib.contextmanager
    def _failing(self):
        from .failure import note

        try:
            yield
        except OSError as e:
            self.writer = None  # nothing more goes to a writer that failed, not even its close()
            raise note(e, self.folder) from None

    def __bool__(self) -> bool:
        return self.writer is not None

    def hparams(self, config: dict, loss_names) -> None:
        """The settings, in the HParams dashboard beside the runs' losses. Written into this run's own
        folder (SummaryWriter.add_hparams would open a sub-run), naming the loss scalars as its metrics."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, (bool, int, float, str)) else ("" if v is None else str(v))
                 for k, v in config.items()}
        with self._failing():
            for summary in hparams(clean, {LOSS_TAG.format(k): 0.0 for k in loss_names}):
                self.writer.file_writer.add_summary(summary)

    def scalars(self, iteration: int, losses: dict, lr: float) -> None:
        if self.writer is None:
            return
        with self._failing():
            for k, v in losses.items():
                self.writer.add_scalar(LOSS_TAG.format(k), v, iteration)
            self.writer.add_scalar(LR_TAG, lr, iteration)

    def image(self, epoch: int, grid: np.ndarray) -> None:
        """The epoch's sample grid (H x W x 3 uint8), step = the epoch, so the slider walks through epochs."""
        if self.writer is None:
            return
        with self._failing():
            self.writer.add_image(SAMPLES_TAG, grid, epoch, dataformats="HWC")
            self.writer.flush()

    def flush(self) -> None:
        if self.writer is not None:
            with self._failing():
                self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError):  # at the end of a run that failed: it was said already
                self.writer.close()


def _quiet_writer_threads() -> None:
    """TensorBoard writes from a thread of its own, which prints its exception before the next call
    raises it here; that call reports it (once, in one line), so the thread keeps quiet."""
    previous = threading.excepthook
    if getattr(previous, "cyclebatch_board", False):
        return

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.cyclebatch_board = True
    threading.excepthook = hook
