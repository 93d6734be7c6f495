"""`cyclebatch distill`, judged: a student's cost, fidelity and speed against its teacher, in one run.

    python benchmarks/photos.py /tmp/corpus                                  # the real photos (fetched once)
    python benchmarks/bench_distill.py --photos /tmp/corpus --minutes 30     # vintage -> small, then the figures
    python benchmarks/bench_distill.py --photos /tmp/corpus --size tiny --minutes 12
    python benchmarks/bench_distill.py --photos /tmp/corpus --teacher zoo-random --minutes 8
    python benchmarks/bench_distill.py --photos /tmp/corpus --run runs/s      # figures of a student already made

Distils TEACHER on PHOTOS/tune (or reuses --runs-dir/NAME) with the library call `distill` runs, then prints:
- MACs (at 256x256) and parameters of student and teacher, and their ratio (goals: small <= 1/10, tiny <= 1/25);
- PSNR and SSIM of the student's outputs to the teacher's on PHOTOS/held-out, the photos scaled to 256 and to
  1024 px on the longer side, both run by the engine as `run` runs them (goal: >= 32 dB at both), and the PSNR
  once each image's mean colour error is taken out (the share of the gap that is overall tone, not detail);
- the engine's images/s for teacher and student on the held-out photos at 512 px (`run`'s work minus the
  file I/O, two images at once on a CPU as `run` schedules them), alternating rounds, median ratio (goal >= 6x);
  the same through `run`'s library call with JPEG files in and out; for `video` at 640x480 on real footage with
  the temporal stabiliser on (goal >= 5x) and for the TFLite export in the LiteRT interpreter at 256x256
  (goal >= 8x);
- the training wall time, and the CPU's features beside every figure.
--teacher zoo-random is the official zoo layout (resnet_9blocks, ngf 64, plain InstanceNorm) with random
weights: a stand-in for a strong-texture zoo model, whose weights this machine cannot fetch; its figures show
cost and speed, not a real look.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cyclebatch.engine.device import cpu_flags, cpu_model_name  # noqa: E402
from cyclebatch.engine.teams import team_pool, teams  # noqa: E402
from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.models.checkpoints import save_generator  # noqa: E402
from cyclebatch.models.cost import macs, parameters  # noqa: E402
from cyclebatch.models.networks import GeneratorConfig, ResnetGenerator, init_weights  # noqa: E402
from cyclebatch.models.registry import load_generator  # noqa: E402
from cyclebatch.train.fidelity import psnr, ssim  # noqa: E402


def cpu() -> str:
    flags = set(cpu_flags().split())
    feats = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{cpu_model_name() or 'unknown CPU'}, {torch.get_num_threads()} threads, {' '.join(feats) or 'no AVX2'}"


def photos(folder: Path, longest: int) -> list[np.ndarray]:
    out = []
    for p in sorted(folder.iterdir()):
        im = Image.open(p).convert("RGB")
        f = longest / max(im.size)
        out.append(np.asarray(im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.BICUBIC)))
    return out


def fidelity(teacher: Translator, student: Translator, images: list[np.ndarray]) -> tuple[float, float, float]:
    """Mean PSNR and SSIM of the student's outputs to the teacher's; and the PSNR once each image's overall colour
    error (the mean difference per channel) is taken out: how much of the gap is the image's tone, not its detail."""
    pairs = [(teacher.translate(x), student.translate(x)) for x in images]
    return (float(np.mean([psnr(s, t) for t, s in pairs])), float(np.mean([ssim(s, t) for t, s in pairs])),
            float(np.mean([toned_psnr(s, t) for t, s in pairs])))


def toned_psnr(student: np.ndarray, teacher: np.ndarray) -> float:
    """PSNR of `student` to `teacher` once its overall colour error (the mean difference per channel) is removed."""
    return psnr(student - (student.astype(np.float64) - teacher).reshape(-1, 3).mean(axis=0), teacher)


def alternate(runs: dict, rounds: int) -> dict:
    """Seconds per call of each runner, rounds alternating between them; the median per runner."""
    times = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm: plans, kernels, caches
    for _ in range(rounds):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def engine_pass(eng: Translator, images: list) -> None:
    """The images through the engine as `run` schedules them: on a CPU two at once, each on half the threads."""
    n = teams(eng)
    if n == 1:
        for x in images:
            eng.translate(x)
        return
    with team_pool(n) as pool:
        list(pool.map(eng.translate, images))


def run_speed(t_eng: Translator, s_eng: Translator, images: list, rounds: int) -> dict:
    """Seconds of `run`'s library call (translate_paths) on the images as JPEG files, output JPEG: decode, model,
    encode and write, alternating rounds."""
    from cyclebatch.run.pipeline import RunOptions, translate_paths

    tmp = Path(tempfile.mkdtemp(prefix="bench_distill-run-"))
    (tmp / "in").mkdir()
    for i, x in enumerate(images):
        Image.fromarray(x).save(tmp / "in" / f"{i:02d}.jpg", quality=95)
    opts = RunOptions(overwrite=True)
    return alternate({k: (lambda e=e, k=k: translate_paths([str(tmp / "in")], tmp / k, e, opts))
                      for k, e in (("teacher", t_eng), ("student", s_eng))}, rounds)


def video_clip(folder: Path) -> Path:
    """48 frames of real footage without a cut (OpenCV's vtest.avi, people walking, 768x576 scaled to 640x480) as
    H.264: the stabiliser does its whole work on every frame. (A clip of different photos in turn, as this bench
    used before, is a cut at every frame: the stabiliser then restarts and skips its blend.)"""
    import av
    import cv2

    from bench_temporal import CORPUS, clip_path

    src = folder / "vtest-640x480.mp4"
    spec = next(s for s in CORPUS if s.name == "vtest")
    with av.open(str(clip_path(spec))) as c, av.open(str(src), "w") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 640, 480, "yuv420p"
        for i, frame in enumerate(c.decode(video=0)):
            if i == VIDEO_FRAMES:
                break
            rgb = cv2.resize(frame.to_ndarray(format="rgb24"), (640, 480), interpolation=cv2.INTER_AREA)
            for packet in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return src


def video_speed(teacher_net, student_net, rounds: int) -> dict:
    """frames/s of translate_video (decode, model, flow stabiliser, H.264 encode) at 640x480 on `video_clip`."""
    from cyclebatch.video.api import translate_video

    tmp = Path(tempfile.mkdtemp(prefix="bench_distill-"))
    src = video_clip(tmp)
    engines = {"teacher": Translator(teacher_net, device="cpu"), "student": Translator(student_net, device="cpu")}
    runs = {k: (lambda tr=tr, k=k: translate_video(src, tmp / f"{k}.mp4", tr, temporal="flow", overwrite=True))
            for k, tr in engines.items()}
    return {k: VIDEO_FRAMES / v for k, v in alternate(runs, rounds).items()}


VIDEO_FRAMES = 48


def tflite_speed(teacher_net, student_net, rounds: int) -> dict:
    from cyclebatch.errors import CycleBatchError
    from cyclebatch.export import tflite as export_tflite
    from cyclebatch.export.api import export

    try:
        export_tflite._require_converter()
    except CycleBatchError as e:
        return {"skipped": str(e)}
    tmp = Path(tempfile.mkdtemp(prefix="bench_distill-tfl-"))
    image = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
    runs = {}
    for k, net in (("teacher", teacher_net), ("student", student_net)):
        export(net, tmp / f"{k}.tflite", size=(256, 256))
        runner = export_tflite.interpreter(tmp / f"{k}.tflite", threads=torch.get_num_threads()).get_signature_runner()
        runs[k] = lambda r=runner: r(image=image)
    return {k: 1 / v for k, v in alternate(runs, rounds).items()}


def figure(t_eng: Translator, s_eng: Translator, held: Path, out: Path) -> None:
    """Photo | teacher | student for two held-out photos at 384 px, each with its PSNR to the teacher."""
    from PIL import ImageDraw

    rows = []
    for name in ARGS.figure_photos.split(","):
        x = np.asarray(Image.open(held / name).convert("RGB"))
        f = 384 / max(x.shape[:2])
        x = np.asarray(Image.fromarray(x).resize((round(x.shape[1] * f), round(x.shape[0] * f)), Image.Resampling.LANCZOS))
        t, s = t_eng.translate(x), s_eng.translate(x)
        panels = []
        for img, label in ((x, "photo"), (t, "teacher (vintage)"), (s, f"student: {psnr(s, t):.1f} dB to the teacher")):
            im = Image.fromarray(img)
            d = ImageDraw.Draw(im)
            d.rectangle((0, 0, 8 + 6 * len(label), 16), fill=(0, 0, 0))
            d.text((4, 3), label, fill=(255, 255, 255))
            panels.append(np.asarray(im))
        rows.append(np.concatenate(panels, axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    Image.fromarray(grid).save(out, quality=90, subsampling=0)
    print(f"figure: {out}")


def teacher_of(name: str, folder: Path):
    if name != "zoo-random":
        return name, load_generator(name)
    torch.manual_seed(0)
    net = init_weights(ResnetGenerator(GeneratorConfig(ngf=64, n_blocks=9)))
    path = save_generator(net, folder / "zoo-random.safetensors", {"translates": "random weights (stand-in)"})
    return str(path), net


def main() -> None:
    from cyclebatch.train.distill import distill
    from cyclebatch.train.distill_config import DistillConfig

    runs_dir = Path(ARGS.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    teacher_arg, teacher_net = teacher_of(ARGS.teacher, runs_dir)
    run = Path(ARGS.run) if ARGS.run else runs_dir / (ARGS.name or f"{Path(ARGS.teacher).stem}-{ARGS.size}")
    trained = None
    if not (run / "generator.safetensors").is_file():
        cfg = DistillConfig(teacher=teacher_arg, photos=str(Path(ARGS.photos) / ARGS.train), name=run.name,
                            runs_dir=str(run.parent), size=ARGS.size, minutes=ARGS.minutes,
                            val=str(Path(ARGS.photos) / ARGS.val) if ARGS.val else "", progress=False)
        result = distill(cfg, log=lambda m: print(f"  {m}", flush=True))
        trained = result.seconds
    student_net = load_generator(str(run / "generator.safetensors"))
    meta = student_net.metadata.get("distilled", {})
    print(f"\nCPU: {cpu()}; torch {torch.__version__}")
    print(f"teacher {ARGS.teacher} ({teacher_net.config.describe()}); student {run} ({student_net.config.describe()})")
    if trained is not None:
        print(f"training wall time: {trained / 60:.1f} min (teacher outputs, start, training and scoring)")
    t_m, s_m = macs(teacher_net), macs(student_net)
    t_p, s_p = parameters(teacher_net), parameters(student_net)
    print(f"MACs at 256x256: teacher {t_m / 1e9:.2f} G, student {s_m / 1e9:.3f} G: 1/{t_m / s_m:.1f}")
    print(f"parameters: teacher {t_p / 1e6:.2f} M, student {s_p / 1e6:.3f} M: 1/{t_p / s_p:.1f}")
    if meta:
        f = meta.get("fidelity", {})
        print(f"distill's own held-out score: PSNR {f.get('psnr_db')} dB, SSIM {f.get('ssim')} at iteration "
              f"{f.get('iteration')}")
    scores = run / "scores.csv"
    if scores.is_file():  # the learning curve: where more minutes would go
        rows = [line.split(",") for line in scores.read_text().splitlines()[1:]]
        print("distill's held-out scorings (iteration: PSNR dB): " + ", ".join(f"{r[0]}: {float(r[1]):.2f}" for r in rows))
    t_eng, s_eng = Translator(teacher_net, device="cpu"), Translator(student_net, device="cpu")
    held = Path(ARGS.photos) / "held-out"
    for side in (256, 1024):
        p, s, toned = fidelity(t_eng, s_eng, photos(held, side))
        print(f"held-out ({held}, {len(list(held.iterdir()))} photos) at {side} px: PSNR {p:.2f} dB, SSIM {s:.4f} "
              f"to the teacher ({t_eng.precision} engine); {toned:.2f} dB with each image's mean colour error removed")
    images = photos(held, 512)
    if ARGS.figure:
        figure(t_eng, s_eng, held, Path(ARGS.figure))
    speed = alternate({"teacher": lambda: engine_pass(t_eng, images),
                       "student": lambda: engine_pass(s_eng, images)}, ARGS.rounds)
    print(f"run (engine, {len(images)} photos at 512 px, {t_eng.precision}, {teams(s_eng)} at once as `run` puts them "
          f"through): teacher {len(images) / speed['teacher']:.2f} images/s, student "
          f"{len(images) / speed['student']:.2f} images/s: {speed['teacher'] / speed['student']:.2f}x  [{cpu()}]")
    speed = run_speed(t_eng, s_eng, images, ARGS.rounds)
    print(f"run (translate_paths: JPEG in and out, {len(images)} photos at 512 px): teacher "
          f"{len(images) / speed['teacher']:.2f} images/s, student {len(images) / speed['student']:.2f} images/s: "
          f"{speed['teacher'] / speed['student']:.2f}x  [{cpu()}]")
    if ARGS.video:
        v = video_speed(teacher_net, student_net, max(1, ARGS.rounds // 2))
        print(f"video 640x480, temporal flow: teacher {v['teacher']:.2f} frames/s, student {v['student']:.2f} "
              f"frames/s: {v['student'] / v['teacher']:.2f}x  [{cpu()}]")
    if ARGS.tflite:
        t = tflite_speed(teacher_net, student_net, ARGS.rounds)
        if "skipped" in t:
            print(f"tflite: skipped ({t['skipped']})")
        else:
            print(f"tflite fp32 in LiteRT at 256x256: teacher {t['teacher']:.2f} images/s, student "
                  f"{t['student']:.2f} images/s: {t['student'] / t['teacher']:.2f}x  [{cpu()}]")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, help="the corpus folder (benchmarks/photos.py)")
    ap.add_argument("--train", default="tune", help="subfolder distilled on")
    ap.add_argument("--val", default="", help="subfolder scored during training (default: a tenth of --train)")
    ap.add_argument("--teacher", default="vintage")
    ap.add_argument("--size", default="small")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--runs-dir", default="runs-bench")
    ap.add_argument("--name", default="")
    ap.add_argument("--run", default="", help="an existing distillation run: measure it, train nothing")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--no-video", dest="video", action="store_false")
    ap.add_argument("--no-tflite", dest="tflite", action="store_false")
    ap.add_argument("--figure", default="", help="write photo | teacher | student of held-out photos here (JPEG)")
    ap.add_argument("--figure-photos", default="chelsea.png,coffee.png")
    ARGS = ap.parse_args()
    torch.set_num_threads(2)
    main()
