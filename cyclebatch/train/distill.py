"""`distill(DistillConfig(teacher, photos, name))`: a small student generator trained to reproduce a teacher.

The run: photos -> held-out split -> teacher-labelled crops (crops.py, cached) -> the student, started from the
teacher's own weights (students.py) -> a planned number of iterations (from --iterations, or from the time
--minutes leaves once the teacher is done and a few iterations are timed) of an L1 loss to the teacher's outputs,
Adam with cosine decay -> held-out photos scored `evals` times (fidelity.py) -> the best student written as
runs/NAME/generator.safetensors, which `run`, `video` and `export` load by NAME.

Every scoring also writes checkpoints/latest.pt (student, optimiser, the plan, the best so far), so a killed
run resumes exactly: the batches of iteration i depend only on (seed, i), never on what ran before.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import CycleBatchError
from ..io.files import sweep_dead_temps
from ..models.checkpoints import save_generator
from ..models.cost import macs, parameters
from ..models.networks import GeneratorConfig, ResnetGenerator
from .checkpoint import check_run_folder, resume_point
from .crops import TEACHER_SHARE, CropBank, build, crop_count
from .data import find_images, load_rgb8, usable_images
from .distill_config import DistillConfig
from .distill_report import DistillReport
from .distill_step import compiled, dtype_name, lr_at, training_dtype, worth_compiling
from .failure import resume_command, stop_line, writing
from .fidelity import HeldOut
from .students import PROBE, student_config, student_from
from .trainer import StopRequest

CHECKPOINT_FORMAT = "cyclebatch-distill"
HELD_OUT_MAX = 10
HELD_OUT_LONGEST = 1024  # px: held-out photos are scored whole, at most this large (what `run` would see)
CALIBRATION = 8  # crops the student's least-squares start is fitted on
# iterations timed for the plan: after the first two (allocations, compiling); several, for a steady figure
PLAN_AFTER = (2, 8)
# Of the plan: scorings before this are provisional. The learning rate is high there and with few held-out photos
# the scores are noisy: two acceptance runs of issue 31 (10 photos, 1 held out) stopped at 83% and 58% of their
# plans, the second on 4 scorings below a lucky early one. So flat scorings count towards an early stop only after
# it, and the first scoring after it replaces an earlier best: a third acceptance run (2 held out) kept its student
# of iteration 1017 of 4074 on a lucky score and stopped at 3390; on 4 other photos the kept student scored 22.16 dB
# and the last one 23.72.
EARLY_STOP_FROM = 0.5


@dataclass
class DistillResult:
    run_dir: Path
    generator: Optional[Path]
    iteration: int
    iterations: int
    finished: bool
    interrupted: bool
    best: dict  # {"psnr", "ssim", "iteration"} of the student written
    start: dict  # the student's score before training
    macs_ratio: float
    params_ratio: float
    seconds: float

    def summary(self) -> str:
        b = self.best
        state = "finished" if self.finished else "stopped"
        score = (f"held-out PSNR {b['psnr']:.2f} dB, SSIM {b['ssim']:.4f} to the teacher" if b else "not scored yet")
        return (f"{state} at iteration {self.iteration} of {self.iterations}: {score}; 1/{self.macs_ratio:.1f} of "
                f"its MACs, 1/{self.params_ratio:.1f} of its parameters")


def distill(config: DistillConfig, log=print, warn=None) -> DistillResult:
    """Distil (or, with config.resume, continue distilling) a teacher into a student; see the module doc."""
    return Distiller(config, log, warn or log).fit()


def split_photos(files: list[Path], val: str, warn) -> tuple[list[Path], list[Path]]:
    """(training photos, held-out photos): the --val folder's, else every fifth photo (at least one, at most
    HELD_OUT_MAX): one photo's score picks the kept student by luck (a run of 10 photos kept an early one)."""
    if val:
        return files, find_images(val)
    if len(files) < 2:
        warn(f"only {len(files)} photo: it is scored as well as trained on (no held-out photo; give --val)")
        return files, files
    step = min(5, len(files))
    held = files[step // 2::step][:HELD_OUT_MAX]
    return [f for f in files if f not in held], held


def _ratios(teacher_cost: tuple[int, int], student) -> tuple[float, float]:
    """How many times the student's MACs (at PROBE px) and parameters go into the teacher's."""
    return teacher_cost[0] / macs(student, PROBE, PROBE), teacher_cost[1] / parameters(student)


def _fit_long_side(rgb: np.ndarray, longest: int) -> np.ndarray:
    from ..io.images import resize_to

    h, w = rgb.shape[:2]
    if max(h, w) <= longest:
        return rgb
    f = longest / max(h, w)
    return resize_to(rgb, (max(1, round(w * f)), max(1, round(h * f))))


class Distiller:
    def __init__(self, config: DistillConfig, log, warn):
        from ..engine.device import pick_device
        from ..models.download import sha256_of
        from ..models.registry import load_generator, resolve

        self.started = time.perf_counter()
        self.log, self.warn = log, warn
        config.validate()
        check_run_folder(config.run_dir)
        # config.json marks a run whose first checkpoint is not written yet: --resume starts it again
        config, self.stored = resume_point(config, CHECKPOINT_FORMAT, "distillation", "config.json")
        self.config = c = config
        self.run_dir = c.run_dir
        # the photos first: a typo in a folder fails in a second, before the teacher loads
        files, bad = usable_images(c.photos, warn)
        self.train_files, self.held_files = split_photos(files, c.val, warn)
        self.device = pick_device(c.device)
        self.teacher = load_generator(c.teacher, c.direction)
        teacher_file = resolve(c.teacher, c.direction)
        self.teacher_info = {"model": c.teacher, "file": str(teacher_file), "sha256": sha256_of(teacher_file),
                             "architecture": self.teacher.config.describe(),
                             "translates": self.teacher.metadata.get("translates", "")}
        self.dtype = training_dtype(c.precision, self.device)
        self.report = DistillReport(self.run_dir, c, self.teacher_info)
        self.saved: Optional[tuple] = None

    # ------------------------------------------------------------ the run

    def fit(self) -> DistillResult:
        with StopRequest() as stop:
            try:
                return self._fit(stop)
            except BaseException as e:
                line = stop_line(e, self.run_dir, self.saved,
                                 resume_command(self.config.name, self.config.runs_dir, "distill"))
                self.report.status("failed", line or (str(e).splitlines()[0][:300] if str(e) else type(e).__name__))
                if line is None:
                    raise
                raise CycleBatchError(line) from None
            finally:
                sweep_dead_temps(self.run_dir)

    def _teacher_engine(self):
        from ..engine.translator import Translator

        return Translator(self.teacher, device=str(self.device))

    def _fit(self, stop: StopRequest) -> DistillResult:
        c, s = self.config, self.stored
        sweep_dead_temps(self.run_dir)
        (self.run_dir / "cache").mkdir(parents=True, exist_ok=True)
        with writing(self.run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps({**c.to_dict(), "teacher_info": self.teacher_info}, indent=1, default=str) + "\n")
        teacher = self._teacher_engine()
        data = self._data(teacher, stop)
        del teacher
        t_cost = (macs(self.teacher, PROBE, PROBE), parameters(self.teacher))
        if data is None:  # Ctrl-C or SIGTERM while the teacher labelled crops: nothing to keep yet
            self.log("stopped while the teacher labelled crops; --resume starts the run again")
            self.report.status("stopped")
            return DistillResult(self.run_dir, None, 0, c.iterations or 0, False, True, {}, {},
                                 *_ratios(t_cost, ResnetGenerator(student_config(self.teacher, c.size, t_cost))),
                                 time.perf_counter() - self.started)
        bank, held = data
        if s is None:
            calib = torch.from_numpy(bank.inputs[:: max(1, len(bank) // CALIBRATION)][:CALIBRATION])
            student_cfg = student_config(self.teacher, c.size, t_cost)
            student = student_from(self.teacher, student_cfg, calib.permute(0, 3, 1, 2).float() / 127.5 - 1, self.log)
        else:
            student = ResnetGenerator(GeneratorConfig(**s["student_config"]))
            student.load_state_dict(s["student"])
        self.ratios = _ratios(t_cost, student)
        self.teacher = None  # its memory back: only the student trains from here
        student = student.to(self.device).train()
        opt = torch.optim.Adam(student.parameters(), lr=c.lr, betas=(0.9, 0.99))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        st = {"iteration": 0, "plan": c.iterations, "best": {}, "start": {}, "best_state": None, "scores": [],
              "losses": [], "since_best": 0, "seconds": 0.0}
        if s is not None:
            opt.load_state_dict(s["opt"])
            if s.get("scaler"):
                scaler.load_state_dict(s["scaler"])
            st.update({k: s[k] for k in st if k in s})
            self.report.best = st["best"]  # `runs status` shows it before the resumed run's first scoring
        self.log(f"distilling {c.teacher} ({self.teacher_info['architecture']}) into a {c.size} student "
                 f"({student.config.describe()}): 1/{self.ratios[0]:.1f} of its MACs, 1/{self.ratios[1]:.1f} of its "
                 f"parameters; {len(bank)} crops of {len(self.train_files)} photos, {len(held)} held out, device "
                 f"{self.device}, precision {dtype_name(self.dtype)}")
        if not st["start"]:
            st["start"] = self._score(student, held, 0)[0]
            self.log(f"untrained student: held-out PSNR {st['start']['psnr']:.2f} dB")

        x_all, y_all = torch.from_numpy(bank.inputs), torch.from_numpy(bank.targets)
        forward = compiled(student) if worth_compiling(c, st["plan"]) else student
        budget = c.budget_seconds
        interrupted = finished = False
        t_loop = time.perf_counter()
        timed = None  # (iteration, time, seconds scoring by then): where the pace is measured from
        scoring = 0.0  # seconds this process spent scoring held-out photos and writing checkpoints
        replan = budget is not None and c.iterations is None
        first = st["iteration"]
        spent_before = st["seconds"]
        with self.report.progress(st["plan"], st["iteration"]) as bar:
            while True:
                it = st["iteration"]
                if st["plan"] is not None and it >= st["plan"]:
                    finished = True
                    break
                if stop.signal is not None or (c.max_iterations is not None and it >= c.max_iterations):
                    interrupted = True
                    break
                lr = lr_at(c.lr, it, st["plan"])
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = torch.from_numpy(np.random.default_rng([c.seed, it]).choice(len(bank), c.batch_size,
                                                                               replace=len(bank) < c.batch_size))
                x = x_all[idx].to(self.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1).contiguous()
                y = y_all[idx].to(self.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1).contiguous()
                if replan and timed is None and it >= first + PLAN_AFTER[0]:
                    timed = (it, time.perf_counter(), scoring)
                try:
                    loss = self._loss(forward, opt, x, y, scaler)
                except Exception as e:  # noqa: BLE001 - a graph that does not compile here trains eagerly
                    if forward is student:
                        raise
                    self.warn(f"torch.compile failed ({type(e).__name__}); training without it")
                    forward = student
                    loss = self._loss(forward, opt, x, y, scaler)
                if not torch.isfinite(loss):
                    raise CycleBatchError(f"{self.run_dir}: non-finite loss at iteration {it + 1}; try a lower --lr "
                                          "or --precision fp32")
                scaler.step(opt)
                scaler.update()
                st["iteration"] = it = it + 1
                st["losses"].append((it, loss.item(), lr))
                if st["plan"] is None and timed is not None and it - timed[0] >= PLAN_AFTER[1] - PLAN_AFTER[0]:
                    # warm steps timed: plan what the budget leaves
                    st["plan"], spi = self._planned(it, timed, scoring, spent_before, budget, c.evals)
                    bar.plan(st["plan"])
                    self.log(f"plan: {st['plan']} iterations at {spi:.2f} s each, {c.evals} held-out scorings")
                self.report.iteration(it, st["losses"][-1][1], lr, st["plan"])
                bar.advance(st["losses"][-1][1])
                plan = st["plan"] or 0
                every = max(1, plan // c.evals) if plan else 0
                last = plan and it >= plan
                if (every and it % every == 0) or last:
                    t_score = time.perf_counter()
                    st["seconds"] = spent_before + t_score - t_loop
                    score, outputs = self._score(student, held, it)
                    st["scores"].append(score)
                    settled = it >= EARLY_STOP_FROM * plan
                    provisional = st["best"] and st["best"]["iteration"] < EARLY_STOP_FROM * plan
                    if not st["best"] or score["psnr"] > st["best"]["psnr"] or (settled and provisional):
                        st["best"], st["since_best"] = score, 0
                        st["best_state"] = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
                        self._export(student, score)
                        self.report.samples(it, held, outputs)
                    elif settled:  # flat scorings count in the plan's second half only
                        st["since_best"] += 1
                    self._checkpoint(student, opt, scaler, st)
                    self.report.write("distilling", st)
                    bar.note(f"held-out PSNR {score['psnr']:.2f} dB (best {st['best']['psnr']:.2f})")
                    scoring += time.perf_counter() - t_score
                    if replan and timed is not None and it > timed[0] and it < EARLY_STOP_FROM * plan:
                        # the pace of the first few steps can be a busy moment or a slow start: until the plan's
                        # second half (the schedule settles from there) the plan follows the pace since the last
                        # scoring, a twelfth of the plan
                        new, spi = self._planned(it, timed, scoring, spent_before, budget,
                                                 max(1, c.evals - len(st["scores"])))
                        timed = (it, time.perf_counter(), scoring)
                        if abs(new - plan) > 0.05 * plan:
                            st["plan"] = new
                            bar.plan(new)
                            self.log(f"re-planned: {new} iterations at {spi:.2f} s each (the pace since the last "
                                     f"scoring; was {plan})")
                    over = budget is not None and time.perf_counter() - self.started > budget * 1.1
                    if st["since_best"] >= c.patience or over:
                        self.log(f"stopped early at iteration {it}: " + ("the time budget is spent" if over else
                                 f"no better held-out score in {c.patience} scorings"))
                        finished = True
                        break
        st["seconds"] = spent_before + time.perf_counter() - t_loop
        if self.saved is None or self.saved[0] != st["iteration"]:
            self._checkpoint(student, opt, scaler, st)
        state = "finished" if finished else "stopped"
        self.report.write(state, st)
        self.report.status(state)
        generator = self.run_dir / "generator.safetensors"
        return DistillResult(self.run_dir, generator if generator.is_file() else None, st["iteration"],
                             st["plan"] or st["iteration"], finished, interrupted or stop.signal is not None,
                             st["best"], st["start"], *self.ratios, time.perf_counter() - self.started)

    # ------------------------------------------------------------ pieces

    def _planned(self, it: int, timed: tuple, scoring: float, spent_before: float, budget: float,
                 evals: int) -> tuple[int, float]:
        """(the plan, seconds an iteration): the iterations the budget leaves, after `evals` more scorings, at the
        pace measured since `timed` (scorings excluded)."""
        now = time.perf_counter()
        spi = max(1e-6, (now - timed[1] - (scoring - timed[2])) / (it - timed[0]))
        left = budget - (now - self.started) - spent_before
        return max(it, it + int((left - evals * self._last_eval_seconds) / spi)), spi

    def _loss(self, forward, opt, x: torch.Tensor, y: torch.Tensor, scaler) -> torch.Tensor:
        """One forward and backward pass (gradients left in the student); the L1 loss to the teacher."""
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = forward(x)
        loss = (out.float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        return loss

    def _data(self, teacher, stop: StopRequest) -> Optional[tuple[CropBank, HeldOut]]:
        c = self.config
        path = self.run_dir / "cache" / "crops.npz"
        bank = CropBank.load(path) if path.is_file() else None
        if bank is None or bank.inputs.shape[1] != c.crop_size:
            count = crop_count(c, len(self.train_files))
            budget = c.budget_seconds
            with self.report.progress(count, 0, what="teacher") as bar:
                bank = build(self.train_files, count, c.crop_size, c.seed, teacher,
                             seconds=None if budget is None else budget * TEACHER_SHARE, warn=self.warn,
                             advance=lambda n: bar.advance(None, n), stopped=lambda: stop.signal is not None)
            if bank is None:
                return None
            bank.save(path)
        names, inputs, targets = [], [], []
        for f in self.held_files:
            try:
                rgb = _fit_long_side(load_rgb8(f), HELD_OUT_LONGEST)
                target = teacher.translate(rgb)  # a photo too small for the model fails here
            except Exception as e:  # noqa: BLE001 - one unusable held-out photo is skipped, named
                why = str(e) if isinstance(e, CycleBatchError) else f"{type(e).__name__}: {e}"
                self.warn(f"held-out photo skipped: {why if str(f) in why else f'{f}: {why}'}")
                continue
            names.append(f.name)
            inputs.append(rgb)
            targets.append(target)
        if not inputs:
            raise CycleBatchError(f"{self.held_files[0].parent}: none of the held-out photos can be used")
        return bank, HeldOut(names, inputs, targets)

    _last_eval_seconds = 0.0

    def _score(self, student, held: HeldOut, iteration: int) -> tuple[dict, list]:
        from ..engine.translator import Translator

        t0 = time.perf_counter()
        was_training = student.training
        engine = Translator(copy.deepcopy(student).float().cpu() if self.device.type == "cpu" else student,
                            device=str(self.device))
        outputs = held.outputs(engine)
        student.train(was_training).requires_grad_(True)
        psnr, ssim = held.score(outputs)
        self._last_eval_seconds = time.perf_counter() - t0
        return {"iteration": iteration, "psnr": round(psnr, 3), "ssim": round(ssim, 5)}, outputs

    def _export(self, student, score: dict) -> Path:
        c = self.config
        net = ResnetGenerator(student.config)
        net.load_state_dict({k: v.detach().float().cpu() for k, v in student.state_dict().items()})
        meta = {"name": c.name, "translates": self.teacher_info["translates"], "direction": "AtoB",
                "distilled": {"teacher": self.teacher_info, "size": c.size, "macs_ratio": round(self.ratios[0], 2),
                              "params_ratio": round(self.ratios[1], 2), "held_out_photos": len(self.held_files),
                              "fidelity": {"psnr_db": score["psnr"], "ssim": score["ssim"],
                                           "iteration": score["iteration"]}}}
        return save_generator(net, self.run_dir / "generator.safetensors", meta)

    def _checkpoint(self, student, opt, scaler, st: dict) -> None:
        state = {"format": CHECKPOINT_FORMAT, "version": 1, "config": self.config.to_dict(),
                 "student": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                 "student_config": student.config.to_dict(),
                 "opt": opt.state_dict(), "scaler": scaler.state_dict(), **st}
        with writing(self.run_dir / "checkpoints" / "latest.pt") as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
        self.saved = (st["iteration"],)
