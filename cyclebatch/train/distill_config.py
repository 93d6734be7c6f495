"""The settings of a distillation run (`cyclebatch distill`), with the defaults measured to work on 2 CPU cores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import CycleBatchError
from .config import RunConfig
from .students import SIZES, custom_size

# Settings that do not change what is learned: a resumed run takes these from the new call.
RUNTIME_FIELDS = ("photos", "val", "runs_dir", "device", "max_iterations", "resume", "progress")
DEFAULT_MINUTES = 30.0


@dataclass
class DistillConfig(RunConfig):
    RUNTIME = RUNTIME_FIELDS

    teacher: str  # any model `run` loads: zoo name, file, folder, training run
    photos: str  # unpaired photos of the teacher's input domain (the teacher's outputs are the targets)
    name: str
    runs_dir: str = "runs"
    size: str = "small"  # SIZES: small (<= 1/10 of the teacher's cost), tiny (<= 1/25); or NGFxBLOCKS ("24x6")
    direction: str = "AtoB"  # of the teacher, where it is a run holding both
    val: str = ""  # held-out photos; default: every fifth photo (at least one, at most 10) is held out
    minutes: Optional[float] = None  # the whole run's budget (teacher outputs, training, scoring)
    iterations: Optional[int] = None  # instead of minutes: exactly this many training iterations
    crops: int = 0  # teacher-labelled crops; 0: crops.crop_count (48 a photo, more for long runs; fewer when the budget says so)
    crop_size: int = 128  # measured: 128 px x 16 beat 256 px x 8 (same pixels a step) by 2.8 dB in 7 min
    batch_size: int = 16
    lr: float = 1e-3  # Adam, cosine decay to 0 over the planned iterations after a short warm-up
    evals: int = 12  # held-out scorings over the run (the best one is what `run` loads)
    patience: int = 4  # stop early after this many scorings without a better one (in the plan's second half)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # training autocast: bf16 where the CPU has bf16 units or on CUDA, else fp32
    max_iterations: Optional[int] = None  # stop (with a checkpoint) at this iteration; --resume continues
    resume: bool = False
    progress: bool = True

    @property
    def budget_seconds(self) -> Optional[float]:
        if self.iterations is not None:
            return None
        return 60.0 * (self.minutes if self.minutes is not None else DEFAULT_MINUTES)

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise CycleBatchError(f"distill: {msg}")

        self.check_name(bad)
        if self.size not in SIZES and not custom_size(self.size):
            bad(f"--size must be {' or '.join(SIZES)} or NGFxBLOCKS (such as 24x6), not '{self.size}'")
        if self.minutes is not None and self.iterations is not None:
            bad("give --minutes or --iterations, not both")
        if self.minutes is not None and not 0 < self.minutes < float("inf"):
            bad(f"--minutes must be a positive number, not {self.minutes}")
        if self.iterations is not None and self.iterations < 1:
            bad(f"--iterations must be at least 1, not {self.iterations}")
        if self.crop_size < 32 or self.crop_size % 4:
            bad(f"--crop-size must be a multiple of 4 and at least 32, not {self.crop_size}")
        for name in ("batch_size", "evals", "patience"):
            if getattr(self, name) < 1:
                bad(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.crops < 0:
            bad(f"--crops must be 0 (automatic) or more, not {self.crops}")
        if not 0 < self.lr < float("inf"):
            bad(f"--lr must be a positive number, not {self.lr}")
        if self.direction not in ("AtoB", "BtoA"):
            bad(f"--direction must be AtoB or BtoA, not '{self.direction}'")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            bad(f"--precision must be auto, fp32, bf16 or fp16, not '{self.precision}'")
