"""Two model passes at once on a CPU (engine/teams.py) against one team of all the threads, in one run.

    python benchmarks/photos.py /tmp/corpus                                   # the real photos (fetched once)
    python benchmarks/bench_teams.py --photos /tmp/corpus --student runs/vintage-small
    python benchmarks/bench_teams.py --photos /tmp/corpus                     # a random `small` student instead

For the vintage teacher and a distilled student (or a random one of the `small` preset's shape: the speed does
not depend on the weights), alternating rounds, the median per case:
- the engine on PHOTOS/held-out at 512 px: `translate` one image after the other on all torch threads, against
  the images two at a time in a team pool (what `run` does on a CPU);
- `video` at 640x480 on real footage (bench_distill.video_clip), `--temporal flow` and `off`, with the pipeline's
  teams forced to one (the pipelines' `teams` replaced for the run) against the default.
Prints images/s or frames/s, the ratio two teams / one team, and the CPU's features.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_distill import VIDEO_FRAMES, alternate, cpu, engine_pass, photos, video_clip  # noqa: E402
from cyclebatch.engine.translator import Translator  # noqa: E402
from cyclebatch.models.registry import load_generator  # noqa: E402


def student(path: str | None):
    if path:
        p = Path(path)
        return load_generator(str(p / "generator.safetensors" if p.is_dir() else p))
    from cyclebatch.models.networks import ResnetGenerator, init_weights
    from cyclebatch.train.students import PROBE, student_config
    from cyclebatch.models.cost import macs, parameters

    teacher = load_generator("vintage")
    cfg = student_config(teacher, "small", (macs(teacher, PROBE, PROBE), parameters(teacher)))
    return init_weights(ResnetGenerator(cfg)).eval()


def one_team(eng: Translator, images: list) -> None:
    for x in images:
        eng.translate(x)


def forced_teams(n: int | None):
    """The pipelines' choice of teams, replaced by n (None: the default)."""
    import cyclebatch.run.pipeline as run_pipeline
    import cyclebatch.video.pipeline as video_pipeline
    from cyclebatch.engine import teams

    run_pipeline.teams = teams.teams if n is None else (lambda *a, **k: n)
    video_pipeline.model_teams = teams.teams if n is None else (lambda *a, **k: n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", required=True, help="the corpus benchmarks/photos.py writes (its held-out half)")
    ap.add_argument("--student", default=None, help="a distillation run folder or generator file")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-video", dest="video", action="store_false")
    args = ap.parse_args()
    from cyclebatch.video.api import translate_video

    print(f"CPU: {cpu()}; torch {torch.__version__}")
    nets = {"teacher": load_generator("vintage"), "student": student(args.student)}
    engines = {k: Translator(v, device="cpu") for k, v in nets.items()}
    images = photos(Path(args.photos) / "held-out", 512)
    runs = {}
    for k, eng in engines.items():
        runs[(k, "one team")] = lambda eng=eng: one_team(eng, images)
        runs[(k, "two teams")] = lambda eng=eng: engine_pass(eng, images)
    t = alternate(runs, args.rounds)
    for k in engines:
        a, b = len(images) / t[(k, "one team")], len(images) / t[(k, "two teams")]
        print(f"engine, {k}, {len(images)} photos at 512 px: one team {a:.2f} images/s, two teams {b:.2f}: "
              f"{b / a:.2f}x  [{cpu()}]")
    if not args.video:
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_teams-"))
    src = video_clip(tmp)
    runs = {}
    for k, eng in engines.items():
        for temporal in ("flow", "off"):
            for n in (1, None):
                def go(eng=eng, temporal=temporal, n=n):
                    forced_teams(n)
                    try:
                        translate_video(src, tmp / "out.mp4", eng, temporal=temporal, overwrite=True)
                    finally:
                        forced_teams(None)
                runs[(k, temporal, n)] = go
    t = alternate(runs, max(1, args.rounds - 1))
    for k in engines:
        for temporal in ("flow", "off"):
            a, b = VIDEO_FRAMES / t[(k, temporal, 1)], VIDEO_FRAMES / t[(k, temporal, None)]
            print(f"video 640x480, {k}, --temporal {temporal}: one team {a:.2f} frames/s, two teams {b:.2f}: "
                  f"{b / a:.2f}x  [{cpu()}]")


if __name__ == "__main__":
    main()
