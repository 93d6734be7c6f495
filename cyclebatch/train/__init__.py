"""Training CycleGANs: `train(TrainConfig(data_a, data_b, name))` is the whole API.

config.py      the settings and their (paper) defaults   data.py        folders -> deterministic batches
pool.py        the discriminators' image history         step.py        networks, losses, precision, one step
checkpoint.py  saving and exact resume                   distributed.py torchrun: ranks, devices, the group
trainer.py     the run: setup, epoch loop, samples, exports
report.py      losses.csv, sample grids, progress bar        plot.py        losses.png (matplotlib)
board.py       TensorBoard events                          status.py      status.json, `runs status`
page.py        report.html (the shared htmlpage module)
"""

from .config import TrainConfig
from .trainer import TrainResult, load_checkpoint, train

__all__ = ["TrainConfig", "TrainResult", "load_checkpoint", "train"]
