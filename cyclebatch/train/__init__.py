"""Training CycleGANs: `train(TrainConfig(data_a, data_b, name))` is the whole API.

config.py  the settings and their (paper) defaults    data.py     folders -> deterministic batches
pool.py    the discriminators' image history          trainer.py  networks, losses, loop, checkpoints
report.py  losses.csv / losses.png, sample grids, TensorBoard
"""

from .config import TrainConfig
from .trainer import TrainResult, load_checkpoint, train

__all__ = ["TrainConfig", "TrainResult", "load_checkpoint", "train"]
