"""One training iteration: the networks as DDP sees them, the losses, precision and the grad scaler.

One iteration: both generators forward (A->B->A, B->A->B, identities); generator losses with the
discriminators frozen (LSGAN + cycle L1 + identity L1); discriminator losses on fakes drawn from
the image pools; the losses are checked finite (across all ranks) before either optimizer steps,
so a NaN stops the run with the last good weights still in hand.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CycleBatchError
from ..models.networks import ResnetGenerator
from .distributed import sum_across_ranks
from .report import LOSS_NAMES


class Generators(nn.Module):
    """Both generators in one module, so DDP sees one forward per iteration."""

    def __init__(self, G_A: ResnetGenerator, G_B: ResnetGenerator, identity: bool):
        super().__init__()
        self.G_A, self.G_B, self.identity = G_A, G_B, identity

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor):
        fake_B = self.G_A(real_A)
        fake_A = self.G_B(real_B)
        rec_A, rec_B = self.G_B(fake_B), self.G_A(fake_A)
        idt_A = self.G_A(real_B) if self.identity else None
        idt_B = self.G_B(real_A) if self.identity else None
        return fake_B, fake_A, rec_A, rec_B, idt_A, idt_B


def lsgan(pred: torch.Tensor, target: float) -> torch.Tensor:
    pred = pred.float()
    return F.mse_loss(pred, torch.full_like(pred, target))


class Discriminators(nn.Module):
    """D_A judges domain B (real B vs G_A's fakes), D_B judges domain A. Forward = their losses."""

    def __init__(self, D_A: nn.Module, D_B: nn.Module):
        super().__init__()
        self.D_A, self.D_B = D_A, D_B

    def forward(self, real_A, real_B, fake_A, fake_B):
        loss_A = 0.5 * (lsgan(self.D_A(real_B), 1.0) + lsgan(self.D_A(fake_B), 0.0))
        loss_B = 0.5 * (lsgan(self.D_B(real_A), 1.0) + lsgan(self.D_B(fake_A), 0.0))
        return loss_A, loss_B


class NonFiniteLoss(Exception):
    pass


class TrainStep:
    """The Trainer's iteration. Uses its config, device, dtype, world, gens / dis (plain modules),
    train_gens / train_dis (the same, DDP-wrapped on several ranks), opt_G, opt_D, scaler, pool_A, pool_B."""

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def train_step(self, real_A: torch.Tensor, real_B: torch.Tensor, stop: bool = False) -> tuple[list[float], bool]:
        """One optimisation step of all four networks; returns (the eight losses, whether any rank stops)."""
        c = self.config
        lam, lam_idt = c.lambda_cycle, c.lambda_cycle * c.lambda_identity
        D_A, D_B = self.dis.D_A, self.dis.D_B  # unwrapped: frozen here, so DDP has nothing to sync
        zero = torch.zeros((), device=self.device)
        with self.autocast():
            fake_B, fake_A, rec_A, rec_B, idt_A, idt_B = self.train_gens(real_A, real_B)
            self.dis.requires_grad_(False)
            G_A = lsgan(D_A(fake_B), 1.0)
            G_B = lsgan(D_B(fake_A), 1.0)
            cyc_A = F.l1_loss(rec_A.float(), real_A) * lam
            cyc_B = F.l1_loss(rec_B.float(), real_B) * lam
            idt_A_loss = F.l1_loss(idt_A.float(), real_B) * lam_idt if idt_A is not None else zero
            idt_B_loss = F.l1_loss(idt_B.float(), real_A) * lam_idt if idt_B is not None else zero
            loss_G = G_A + G_B + cyc_A + cyc_B + idt_A_loss + idt_B_loss
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(loss_G).backward()

        self.dis.requires_grad_(True)
        pooled_A = self.pool_A.query(fake_A.detach())
        pooled_B = self.pool_B.query(fake_B.detach())
        with self.autocast():
            D_A_loss, D_B_loss = self.train_dis(real_A, real_B, pooled_A, pooled_B)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale(D_A_loss + D_B_loss).backward()

        values = torch.stack([D_A_loss, G_A, cyc_A, idt_A_loss, D_B_loss, G_B, cyc_B, idt_B_loss]).detach().float()
        values = torch.cat([values, torch.tensor([float(stop)], device=self.device)])
        if self.world > 1:
            sum_across_ranks(values)  # one small message: mean losses for the log, NaN anywhere, stop anywhere
            values[:-1] /= self.world
        values = values.tolist()
        losses, stop_any = values[:-1], values[-1] > 0
        if not all(math.isfinite(v) for v in losses):
            bad = ", ".join(f"{k}={v}" for k, v in zip(LOSS_NAMES, losses) if not math.isfinite(v))
            raise NonFiniteLoss(bad)
        self.scaler.step(self.opt_G)
        self.scaler.step(self.opt_D)
        self.scaler.update()
        return losses, stop_any


# Native bf16 tensor cores start with Ampere (compute capability 8.0). torch.cuda.is_bf16_supported()
# also says yes on T4 / V100, where bf16 is emulated and slower than fp16 with a grad scaler.
BF16_CAPABILITY = (8, 0)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    if precision == "auto":
        if device.type != "cuda":
            return None  # bitwise-reproducible fp32 on CPU; bf16 is one flag away
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= BF16_CAPABILITY else torch.float16
    if precision == "fp16" and device.type == "cpu":
        raise CycleBatchError("precision fp16 needs a GPU; on CPU use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def grad_scaler(device: torch.device, enabled: bool):
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled and device.type == "cuda")  # torch < 2.3


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16 + grad scaler"}[dtype]
