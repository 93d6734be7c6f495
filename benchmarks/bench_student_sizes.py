"""Students of growing size, each distilled for the same iterations on the same crops: what fidelity each size
reaches and what speed it leaves, in one run. The frontier the `small` preset sits on.

    python benchmarks/photos.py /tmp/corpus
    python benchmarks/bench_student_sizes.py --photos /tmp/corpus --iterations 1500
    python benchmarks/bench_student_sizes.py --photos /tmp/corpus --sizes tiny,small,22x6,32x9 --iterations 3000
    python benchmarks/bench_student_sizes.py --photos /tmp/corpus --sizes small,16x7,24x3,32x2 --iterations 0
    python benchmarks/bench_student_sizes.py --photos /tmp/corpus --sizes small,tiny --iterations 0 --isa avx2

--iterations 0 trains nothing: untrained students of each shape, for their speed only (it does not depend on
the weights). --isa avx2 times them with ATen, oneDNN and MKL held to AVX2 kernels and fp32 (benchmarks/isa.py):
an AVX2-only CPU's code on this CPU's cores.

Each size (a preset or NGFxBLOCKS) is distilled from the vintage teacher on PHOTOS/TRAIN with the library call
`cyclebatch distill` makes (--iterations, one crop bank labelled once and shared); then, per size:
- MACs at 256x256 and parameters against the teacher's;
- the training step's seconds (compiled, as distill trains) and the iterations' wall time;
- PSNR and SSIM to the teacher on PHOTOS/held-out at 256 px, and with each photo's mean colour error removed;
- the engine's images/s at 512 px against the teacher's, alternating rounds in one run (median ratio; the issue's
  speed goal is >= 6x).
The CPU's features are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import isa  # noqa: E402

if __name__ == "__main__":
    isa.rerun_if_asked()

import torch  # noqa: E402

from bench_distill import alternate, cpu, engine_pass, fidelity, photos  # noqa: E402

from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.models.cost import macs, parameters  # noqa: E402
from cyclebatch.models.networks import ResnetGenerator  # noqa: E402
from cyclebatch.models.registry import load_generator  # noqa: E402
from cyclebatch.train.students import student_config  # noqa: E402


def main(args) -> None:
    from cyclebatch.train.distill import distill
    from cyclebatch.train.distill_config import DistillConfig

    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    teacher = load_generator(args.teacher)
    held = Path(args.photos) / "held-out"
    bank = None
    rows = {}
    for size in args.sizes.split(","):
        if not args.iterations:
            rows[size] = {"net": ResnetGenerator(student_config(teacher, size)), "step": None}
            continue
        run = runs / f"size-{size}"
        if not (run / "generator.safetensors").is_file():
            shutil.rmtree(run, ignore_errors=True)
            if bank is not None:  # the same crops and targets for every size: the teacher labels them once
                (run / "cache").mkdir(parents=True)
                shutil.copy(bank, run / "cache" / "crops.npz")
            val = str(Path(args.photos) / args.val) if args.val else ""
            distill(DistillConfig(teacher=args.teacher, photos=str(Path(args.photos) / args.train), name=run.name,
                                  runs_dir=str(runs), size=size, iterations=args.iterations, val=val,
                                  patience=args.iterations, progress=False),
                    log=lambda m, s=size: print(f"  [{s}] {m}", flush=True))
        if not (run / "generator.safetensors").is_file():
            sys.exit(f"{run}: the distillation stopped before its first scoring; run this again")
        bank = bank or run / "cache" / "crops.npz"
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").is_file() else {}
        net = load_generator(str(run / "generator.safetensors"))
        rows[size] = {"net": net, "step": status.get("seconds_per_iteration")}
    t_eng = Translator(teacher, device="cpu", precision=args.precision)
    engines = {size: Translator(r["net"], device="cpu", precision=args.precision) for size, r in rows.items()}
    images256, images512 = photos(held, 256), photos(held, 512)
    speed = alternate({"teacher": lambda: engine_pass(t_eng, images512),
                       **{size: (lambda e=e: engine_pass(e, images512)) for size, e in engines.items()}}, args.rounds)
    t_macs, t_params = macs(teacher), parameters(teacher)
    print(f"\nCPU: {cpu()}; torch {torch.__version__}, ATen kernels {torch.backends.cpu.get_cpu_capability()}{isa.held()}")
    print(f"teacher {args.teacher} ({teacher.config.describe()}): {len(images512) / speed['teacher']:.2f} images/s "
          f"at 512 px (engine, {t_eng.precision})")
    print(f"{args.iterations} iterations each on {Path(args.photos) / args.train}; scored on {held} "
          f"({len(images256)} photos) at 256 px")
    print("size  | shape          | MACs     | params   | s/step | PSNR dB | tone removed | SSIM   | engine vs teacher")
    for size, r in rows.items():
        net = r["net"]
        p, s, toned = fidelity(t_eng, engines[size], images256) if args.iterations else (float("nan"),) * 3
        print(f"{size:5s} | ngf {net.config.ngf:3d}, {net.config.n_blocks} bl | 1/{t_macs / macs(net):<6.1f} | "
              f"1/{t_params / parameters(net):<6.1f} | {r['step'] or float('nan'):.3f}  | {p:7.2f} | {toned:12.2f} | "
              f"{s:.4f} | {speed['teacher'] / speed[size]:.2f}x  [{cpu()}]")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, help="the corpus folder (benchmarks/photos.py)")
    ap.add_argument("--train", default="tune", help="subfolder distilled on")
    ap.add_argument("--val", default="", help="subfolder scored during training (default: a fifth of --train)")
    ap.add_argument("--teacher", default="vintage")
    ap.add_argument("--sizes", default="tiny,small,22x6,32x9", help="presets or NGFxBLOCKS, comma-separated")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--runs-dir", default="runs-bench-sizes")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--precision", default="auto", help="the engines' precision (auto: bf16 where the CPU has it)")
    ap.add_argument("--isa", choices=["avx2"], help="hold ATen, oneDNN and MKL to AVX2 kernels (see above)")
    torch.set_num_threads(2)
    main(ap.parse_args())
