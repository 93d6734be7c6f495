"""Everything a training run is made of, with the paper's and the official code's defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional

from ..errors import CycleBatchError

PREPROCESS = ("resize_and_crop", "scale_width_and_crop", "crop")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Settings that do not change what is learned: a resumed run takes these from the new call,
# everything else from the checkpoint (so a resume cannot silently change the experiment).
RUNTIME_FIELDS = ("data_a", "data_b", "val_a", "val_b", "runs_dir", "device", "precision", "workers", "max_iterations",
                  "resume", "progress")


class RunConfig:
    """What a training run's and a distillation run's settings share: the run folder, the JSON round trip and
    the resume rule (a resumed run takes the RUNTIME fields from the new call, the rest from its checkpoint)."""

    RUNTIME = RUNTIME_FIELDS

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def resumed_with(self, current):
        """This (stored) config with the runtime settings of `current` (folders: where given)."""
        return replace(self, **{k: getattr(current, k) for k in self.RUNTIME if getattr(current, k) != ""})

    def check_name(self, bad) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            bad(f"--name must be a plain folder name, not '{self.name}'")


@dataclass
class TrainConfig(RunConfig):
    data_a: str
    data_b: str
    name: str
    runs_dir: str = "runs"
    # networks: resnet_9blocks generators, 70x70 PatchGAN discriminators
    ngf: int = 64
    n_blocks: int = 9
    dropout: bool = False
    ndf: int = 64
    d_layers: int = 3
    init_from: Optional[str] = None  # any model the registry can load: fine-tune its generator(s)
    # held-out images (a few per domain) translated at every epoch end into the sample grids
    val_a: str = ""
    val_b: str = ""
    # data: resize to 286, random crop 256, random horizontal flip, B drawn at random
    preprocess: str = "resize_and_crop"
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True
    batch_size: int = 1
    # optimisation: Adam(2e-4, 0.5, 0.999), 100 epochs constant + 100 linear decay to 0
    epochs: int = 100
    decay_epochs: int = 100
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle
    pool_size: int = 50
    seed: int = 0
    # outputs
    save_every: int = 5  # epochs between numbered checkpoints
    latest_every: int = 1000  # iterations between refreshes of checkpoints/latest.pt within an epoch
    log_every: int = 20  # iterations averaged into one row of losses.csv
    # runtime
    device: str = "auto"
    precision: str = "auto"  # auto on CUDA: bf16 from Ampere (8.0) on, fp16 + grad scaler before; fp32 on CPU
    workers: int = -1  # DataLoader decoding processes; -1: min(4, CPUs)
    max_iterations: Optional[int] = None  # stop (with a checkpoint) after this many iterations in all
    resume: bool = False
    progress: bool = True

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.decay_epochs

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise CycleBatchError(f"training config: {msg}")

        self.check_name(bad)
        if self.preprocess not in PREPROCESS:
            bad(f"preprocess must be one of {', '.join(PREPROCESS)}, not '{self.preprocess}'")
        if self.precision not in PRECISIONS:
            bad(f"precision must be one of {', '.join(PRECISIONS)}, not '{self.precision}'")
        if self.crop_size < 16 or self.crop_size % 4:
            bad(f"crop size must be a multiple of 4 and at least 16, not {self.crop_size}")
        if self.preprocess != "crop" and self.load_size < self.crop_size:
            bad(f"load size {self.load_size} is smaller than the crop size {self.crop_size}")
        for name in ("batch_size", "ngf", "ndf", "n_blocks", "d_layers", "save_every", "latest_every", "log_every"):
            if getattr(self, name) < 1:
                bad(f"{name} must be at least 1, not {getattr(self, name)}")
        if bool(self.val_a) != bool(self.val_b):
            bad("give both held-out folders (--val-a and --val-b), or neither")
        if self.epochs < 0 or self.decay_epochs < 0 or self.total_epochs < 1:
            bad("epochs + decay epochs must be at least 1")
        if not 0 < self.lr < float("inf") or self.lambda_cycle < 0 or self.lambda_identity < 0 or self.pool_size < 0:
            bad("lr must be positive; lambdas and pool size non-negative")
