"""Issue 31's acceptance check of `cyclebatch distill`, run as a user runs it, then scored.

    python benchmarks/photos.py /tmp/corpus
    python benchmarks/accept_distill.py /tmp/corpus/accept3-train /tmp/corpus/accept3-check --work /tmp/acc3

In WORK (a fresh folder, the user's current directory), through the command line:
1. `cyclebatch distill TEACHER TRAIN/ --name s --size SIZE --minutes MINUTES --device cpu`;
2. `cyclebatch run CHECK/ -o out-student -m s` and `cyclebatch run CHECK/ -o out-teacher -m TEACHER`.
Then it prints, for each check photo and their mean: PSNR and SSIM of the student's output to the teacher's
(goal >= 30 dB), and the PSNR once the photo's mean colour error is taken out (how much of the gap is overall
tone); the student's parameters and MACs against the teacher's (goal <= 1/10); the engine's images/s for both on
the check photos at their own size, alternating rounds, median ratio (goal >= 6x); the CPU's features.
A WORK that already holds the student (`runs/s/generator.safetensors`) is scored again without training.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_distill import alternate, cpu, engine_pass, toned_psnr  # noqa: E402

from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.models.cost import macs, parameters  # noqa: E402
from cyclebatch.models.registry import load_generator  # noqa: E402
from cyclebatch.train.fidelity import psnr, ssim  # noqa: E402

NAME = "s"


def cli(work: Path, *args) -> None:
    print("$ cyclebatch " + " ".join(map(str, args)), flush=True)
    subprocess.run([sys.executable, "-m", "cyclebatch", *map(str, args)], cwd=work, check=True)


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def main(args) -> None:
    work, train, check = Path(args.work), Path(args.train).resolve(), Path(args.check).resolve()
    work.mkdir(parents=True, exist_ok=True)
    student_file = work / "runs" / NAME / "generator.safetensors"
    if not student_file.is_file():
        cli(work, "distill", args.teacher, train, "--name", NAME, "--size", args.size, "--minutes", args.minutes,
            "--device", "cpu")
    for who, model in (("student", NAME), ("teacher", args.teacher)):
        cli(work, "run", check, "-o", work / f"out-{who}", "-m", model, "--overwrite", "-q")

    print(f"\nCPU: {cpu()}; torch {torch.__version__}")
    status = json.loads((work / "runs" / NAME / "status.json").read_text())
    print(f"distilled: {status.get('iteration')} iterations, kept {json.dumps(status.get('held_out'))}")
    rows = []
    for path in sorted(p for p in check.iterdir() if p.is_file()):
        outs = [work / f"out-{who}" / path.relative_to(check) for who in ("teacher", "student")]
        if not all(o.is_file() for o in outs):
            outs = [next((work / f"out-{who}").glob(path.stem + ".*")) for who in ("teacher", "student")]
        t, s = (rgb(o) for o in outs)
        toned = toned_psnr(s, t)
        rows.append((psnr(s, t), ssim(s, t), toned))
        print(f"{path.name:28s} {t.shape[1]}x{t.shape[0]}  PSNR {rows[-1][0]:6.2f} dB  SSIM {rows[-1][1]:.4f}  "
              f"mean colour error removed {toned:6.2f} dB  teacher mean RGB {t.reshape(-1, 3).mean(0).round()}  "
              f"student {s.reshape(-1, 3).mean(0).round()}")
    p, s, toned = np.mean(rows, axis=0)
    print(f"mean of {len(rows)}: PSNR {p:.2f} dB, SSIM {s:.4f}, mean colour error removed {toned:.2f} dB "
          f"(goal >= 30 dB)")

    teacher, student = load_generator(args.teacher), load_generator(str(student_file))
    print(f"student {student.config.describe()}: 1/{parameters(teacher) / parameters(student):.1f} of the "
          f"teacher's parameters, 1/{macs(teacher) / macs(student):.1f} of its MACs at 256x256 (goal <= 1/10)")
    images = [rgb(p) for p in sorted(check.iterdir()) if p.is_file()]
    t_eng, s_eng = Translator(teacher, device="cpu"), Translator(student, device="cpu")
    speed = alternate({"teacher": lambda: engine_pass(t_eng, images),
                       "student": lambda: engine_pass(s_eng, images)}, args.rounds)
    print(f"engine ({t_eng.precision}), the {len(images)} check photos, median of {args.rounds} alternating rounds: "
          f"teacher {len(images) / speed['teacher']:.2f}, student {len(images) / speed['student']:.2f} images/s: "
          f"{speed['teacher'] / speed['student']:.2f}x (goal >= 6x)  [{cpu()}]")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", help="photos to distil on (about 10, about 512 px)")
    ap.add_argument("check", help="other photos to check the student on")
    ap.add_argument("--work", required=True, help="working folder (the user's current directory)")
    ap.add_argument("--teacher", default="vintage")
    ap.add_argument("--size", default="small")
    ap.add_argument("--minutes", type=float, default=12)
    ap.add_argument("--rounds", type=int, default=4)
    torch.set_num_threads(2)
    main(ap.parse_args())
