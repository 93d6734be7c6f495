"""Training CycleGANs: `train(TrainConfig(data_a, data_b, name))` is the whole API.

config.py      the settings and their (paper) defaults   data.py        folders -> deterministic batches
pool.py        the discriminators' image history         step.py        networks, losses, precision, one step
checkpoint.py  saving and exact resume                   distributed.py torchrun: ranks, devices, the group
trainer.py     the run: setup, epoch loop, samples, exports
report.py      losses.csv, sample grids, progress bar        plot.py        losses.png (matplotlib)
board.py       TensorBoard events                          status.py      status.json, `runs status`
page.py        report.html (the shared htmlpage module)
"""

from .. import lazy_api

# Imported on first use, as in the package above: `cyclebatch runs status` reads status.py alone, without
# torch and the trainer (4 s against 0.5 s on a small machine).
_API = {"TrainConfig": "config", "TrainResult": "trainer", "load_checkpoint": "trainer", "train": "trainer"}
__all__ = sorted(_API)
__getattr__ = lazy_api(__name__, _API)
