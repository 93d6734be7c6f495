"""Training checkpoints: everything a resumed run needs to continue to the bit (networks, optimizers,
schedulers, grad scaler, image pools, RNG states and the position in the epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CycleBatchError
from .failure import writing

CHECKPOINT_FORMAT = "cyclebatch-training"


def load_checkpoint(path: Path, fmt: str = CHECKPOINT_FORMAT, what: str = "training") -> dict:
    """A full checkpoint of format `fmt` (a training or a distillation run): tensors and plain containers
    only (weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CycleBatchError(f"{path}: unreadable {what} checkpoint ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise CycleBatchError(f"{path}: not a cyclebatch {what} checkpoint")
    return state


def resume_point(config, fmt: str = CHECKPOINT_FORMAT, what: str = "training", settings: str = "") -> tuple:
    """(the run's config, its checkpoint or None) for --resume: the stored settings with this call's runtime ones
    (`config` is a TrainConfig or a DistillConfig). `settings`: the file (JSON of the config) a run writes before
    its first checkpoint. Without --resume, a folder that already holds a run (its latest.pt or that file) is
    refused rather than overwritten; with --resume, a run stopped or killed before its first checkpoint starts
    again from that file."""
    ckpt_path = config.run_dir / "checkpoints" / "latest.pt"
    started = config.run_dir / settings if settings else None
    if config.resume:
        if not ckpt_path.is_file() and started is not None and started.is_file():
            try:
                config = type(config).from_dict(json.loads(started.read_text())).resumed_with(config)
            except (OSError, ValueError, TypeError) as e:
                raise CycleBatchError(f"{started}: unreadable ({type(e).__name__}); start the run again under "
                                      "another --name") from None
            config.validate()
            return config, None
        if not ckpt_path.is_file():
            raise CycleBatchError(f"{ckpt_path}: no checkpoint to resume from")
        stored = load_checkpoint(ckpt_path, fmt, what)
        config = type(config).from_dict(stored["config"]).resumed_with(config)
        config.validate()
        return config, stored
    if ckpt_path.exists() or (started is not None and started.exists()):
        raise CycleBatchError(f"{config.run_dir}: already holds a {what} run; pass --resume to continue "
                              "it, or choose another --name")
    return config, None


def check_run_folder(run_dir: Path) -> None:
    """Before any work: a run folder that could never be made (a file where a folder must be)."""
    for p in [run_dir, *run_dir.parents]:
        if p.is_dir():
            return
        if p.exists():
            raise CycleBatchError(f"{run_dir}: cannot make the run folder: {p} is a file, not a folder")


class Checkpointing:
    """The Trainer's saving and restoring. Uses its config, run_dir, is_main, device, domains, the
    counters (epoch, step, iteration, skipped), gens, dis, optimizers, schedulers, scaler, pools, losses."""

    def save_checkpoint(self, numbered: bool = False) -> None:
        if not self.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "version": 1, "config": self.config.to_dict(), "domains": self.domains,
            "epoch": self.epoch, "step": self.step, "iteration": self.iteration, "skipped": self.skipped,
            "G_A": self.gens.G_A.state_dict(), "G_B": self.gens.G_B.state_dict(),
            "D_A": self.dis.D_A.state_dict(), "D_B": self.dis.D_B.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "sched_G": self.sched_G.state_dict(), "sched_D": self.sched_D.state_dict(),
            "scaler": self.scaler.state_dict(),
            "pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        folder = self.run_dir / "checkpoints"
        # Through a Python file object: torch.save to a path reports a full disk as an opaque RuntimeError
        # (`writing` digs the OSError out of the one it raises even so, and notes the space left then).
        for name in ["latest.pt"] + ([f"epoch_{self.epoch:03d}.pt"] if numbered else []):
            with writing(folder / name) as tmp, open(tmp, "wb") as f:
                torch.save(state, f)
            if name == "latest.pt":
                self.saved = (self.epoch, self.step, self.iteration)
        self.losses.write()  # the log always matches the newest checkpoint

    def _restore(self, s: dict) -> None:
        self.gens.G_A.load_state_dict(s["G_A"])
        self.gens.G_B.load_state_dict(s["G_B"])
        self.dis.D_A.load_state_dict(s["D_A"])
        self.dis.D_B.load_state_dict(s["D_B"])
        self.opt_G.load_state_dict(s["opt_G"])
        self.opt_D.load_state_dict(s["opt_D"])
        self.sched_G.load_state_dict(s["sched_G"])
        self.sched_D.load_state_dict(s["sched_D"])
        if s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        self.pool_A.load_state_dict(s["pool_A"], self.device)
        self.pool_B.load_state_dict(s["pool_B"], self.device)
        torch.set_rng_state(s["rng"]["torch"])
        if s["rng"]["cuda"] and torch.cuda.is_available() and len(s["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        self.epoch, self.step, self.iteration = s["epoch"], s["step"], s["iteration"]
        self.saved = (self.epoch, self.step, self.iteration)
        self.skipped = max(self.skipped, s.get("skipped", 0))
