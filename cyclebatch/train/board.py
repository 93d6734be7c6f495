"""TensorBoard events in runs/NAME/tensorboard: the losses and learning rate as scalars, the sample grid
of every epoch as an image, the settings as hyperparameters. Optional (`pip install cyclebatch[train]`)."""

from __future__ import annotations

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
    attempt logged past its checkpoint, so the curves have no doubled stretch."""

    def __init__(self, run_dir: Path, resume_iteration: Optional[int] = None):
        self.writer = None
        if not have_tensorboard():
            return
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_iteration + 1 if resume_iteration else None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

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
        for summary in hparams(clean, {LOSS_TAG.format(k): 0.0 for k in loss_names}):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, iteration: int, losses: dict, lr: float) -> None:
        if self.writer is None:
            return
        for k, v in losses.items():
            self.writer.add_scalar(LOSS_TAG.format(k), v, iteration)
        self.writer.add_scalar(LR_TAG, lr, iteration)

    def image(self, epoch: int, grid: np.ndarray) -> None:
        """The epoch's sample grid (H x W x 3 uint8), step = the epoch, so the slider walks through epochs."""
        if self.writer is None:
            return
        self.writer.add_image(SAMPLES_TAG, grid, epoch, dataformats="HWC")
        self.writer.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
