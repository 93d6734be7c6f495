import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTOS, ROOT, run_cli, tiny_generator
from cyclebatch.engine.translator import Translator
from cyclebatch.io.images import read_image
from cyclebatch.run.pipeline import RunOptions, translate_paths


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_generator().state_dict(), path)
    return path


@pytest.fixture
def translator():
    return Translator(tiny_generator(), device="cpu", precision="fp32")


def photo(size=(61, 47), name="china.jpg"):
    im = Image.open(PHOTOS / name).convert("RGB")
    return im.resize(size, Image.BICUBIC)


def make_tree(root: Path) -> list[Path]:
    (root / "trip" / "day 1").mkdir(parents=True)
    files = [root / "a.jpg", root / "trip" / "b.png", root / "trip" / "day 1" / "ünïcödé café.webp",
             root / "trip" / "odd #1 (copy).JPG"]
    sizes = [(61, 47), (64, 64), (33, 90), (50, 31)]
    for f, s in zip(files, sizes):
        photo(s).save(f)
    (root / "notes.txt").write_text("not an image, ignored")
    return files


def test_output_mirrors_tree_with_exact_sizes_and_formats(tmp_path, translator):
    src = tmp_path / "in"
    files = make_tree(src)
    s = translate_paths([str(src)], tmp_path / "out", translator)
    assert (s.translated, s.failed, s.skipped) == (4, 0, 0)
    for f in files:
        out = tmp_path / "out" / f.relative_to(src)
        assert out.exists(), out
        with Image.open(f) as a, Image.open(out) as b:
            assert a.size == b.size and a.format == b.format
    assert not (tmp_path / "out" / "notes.txt").exists()
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == sorted(f.name for f in files)


def test_ext_changes_the_format_and_glob_inputs_work(tmp_path, translator):
    src = tmp_path / "in"
    make_tree(src)
    s = translate_paths([str(src / "**" / "*.png"), str(src / "a.jpg")], tmp_path / "out", translator,
                        RunOptions(ext=".png"))
    assert s.translated == 2
    assert (tmp_path / "out" / "trip" / "b.png").exists() and (tmp_path / "out" / "a.png").exists()
    with Image.open(tmp_path / "out" / "a.png") as im:
        assert im.format == "PNG" and im.size == (61, 47)


def test_alpha_is_put_back_unchanged(tmp_path, translator):
    rgb = np.asarray(photo((40, 28)))
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (28, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "x.png")
    translate_paths([str(tmp_path / "x.png")], tmp_path / "out", translator)
    out = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert out.shape == (28, 40, 4)
    assert np.array_equal(out[..., 3], alpha)
    assert np.array_equal(out[..., :3], translator.translate(rgb))


def test_gray_palette_and_cmyk_inputs_become_rgb_translations(tmp_path, translator):
    base = photo((36, 20))
    base.convert("L").save(tmp_path / "gray.png")
    base.convert("P").save(tmp_path / "pal.png")
    base.convert("CMYK").save(tmp_path / "cmyk.jpg")
    s = translate_paths([str(tmp_path)], tmp_path / "out", translator, RunOptions())
    assert s.translated == 3 and s.failed == 0
    gray = np.asarray(base.convert("L"))
    expected = translator.translate(np.repeat(gray[..., None], 3, axis=2))
    out = np.asarray(Image.open(tmp_path / "out" / "gray.png").convert("RGB")).astype(int)
    # within one level: three images run two at once on one thread each, and the thread count moves fp32 sums
    # (one pixel of 720 one level off on an AVX-512 EPYC); a grey photo read wrong would be far off
    assert np.abs(out - expected).max() <= 1
    for name in ("pal.png", "cmyk.jpg"):
        with Image.open(tmp_path / "out" / name) as im:
            assert im.size == (36, 20) and im.mode == "RGB"


def test_16bit_png_stays_16bit(tmp_path, translator):
    import cv2

    rgb16 = (np.asarray(photo((32, 24))).astype(np.uint16) * 257 + np.arange(32, dtype=np.uint16)[None, :, None])
    cv2.imwrite(str(tmp_path / "deep.png"), rgb16[..., ::-1])
    translate_paths([str(tmp_path / "deep.png")], tmp_path / "out", translator)
    out = cv2.imread(str(tmp_path / "out" / "deep.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert out.dtype == np.uint16 and out.shape == (24, 32, 3)
    # `run` on a CPU puts two images through at once, one torch thread each: a convolution summed in another
    # order than translate's two threads, a few 16-bit levels off (an 8-bit level is 257)
    diff = np.abs(out.astype(np.int64) - translator.translate(np.ascontiguousarray(rgb16)))
    assert diff.max() <= 4, diff.max()
    assert len(np.unique(out)) > 256  # not 8-bit values scaled up


def test_exif_orientation_is_applied(tmp_path, translator):
    im = photo((40, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    pic = read_image(tmp_path / "rot.jpg")
    assert pic.size == (24, 40)
    translate_paths([str(tmp_path / "rot.jpg")], tmp_path / "out", translator)
    with Image.open(tmp_path / "out" / "rot.jpg") as out:
        assert out.size == (24, 40)
        assert out.getexif().get(0x0112, 1) == 1  # not rotated a second time by viewers


def test_batched_equals_one_at_a_time(translator):
    imgs = [np.asarray(photo((52, 36), n)) for n in ("china.jpg", "flower.jpg", "rocket.jpg")]
    batched = translator.translate_batch(imgs)
    for img, out in zip(imgs, batched):
        # oneDNN may pick another convolution algorithm for another batch size: rounding noise only,
        # where padding or statistics leaking across the batch would move whole regions
        diff = np.abs(out.astype(int) - translator.translate(img))
        assert diff.max() <= 1 and diff.mean() < 0.02


def test_skip_existing_and_overwrite(tmp_path, translator):
    src = tmp_path / "in"
    make_tree(src)
    out = tmp_path / "out"
    translate_paths([str(src)], out, translator)
    target = out / "a.jpg"
    target.write_bytes(b"user's own edit")
    s = translate_paths([str(src)], out, translator)
    assert (s.translated, s.skipped) == (0, 4) and target.read_bytes() == b"user's own edit"
    s = translate_paths([str(src)], out, translator, RunOptions(overwrite=True))
    assert s.translated == 4 and target.read_bytes() != b"user's own edit"


def test_side_by_side_and_working_resolution(tmp_path, translator):
    photo((80, 60)).save(tmp_path / "p.png")
    translate_paths([str(tmp_path / "p.png")], tmp_path / "sbs", translator, RunOptions(side_by_side=True))
    assert Image.open(tmp_path / "sbs" / "p.png").size == (160, 60)
    translate_paths([str(tmp_path / "p.png")], tmp_path / "small", translator, RunOptions(max_size=40))
    assert Image.open(tmp_path / "small" / "p.png").size == (40, 30)


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """file name -> the words its error line must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.jpg"
    photo((40, 30)).save(good)
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture")
    (folder / "random.webp").write_bytes(os.urandom(300))
    photo((300, 200)).save(folder / "huge.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    return {"truncated.jpg": "corrupt or truncated", "zero.png": "empty file", "text.jpg": "not an image",
            "random.webp": "not an image", "huge.png": "over the limit", "dangling.png": "no such file"}


def test_bad_inputs_each_get_one_line_and_the_run_carries_on(tmp_path, model_file):
    src = tmp_path / "in"
    expected = write_bad_inputs(src)
    r = run_cli("run", src, "-o", tmp_path / "out", "-m", model_file, "--max-pixels", "20000", "--precision", "fp32")
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == len(expected), r.stderr
    for name, words in expected.items():
        assert any(name in ln and words in ln for ln in lines), (name, r.stderr)
    assert "Traceback" not in r.stderr
    outputs = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert outputs == ["good.jpg"]  # nothing half-written for the bad ones, the good one done


def test_json_summary_and_exit_codes(tmp_path, model_file):
    src = tmp_path / "in"
    make_tree(src)
    r = run_cli("run", src, "-o", tmp_path / "out", "-m", model_file, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["translated"] == 4 and summary["failed"] == 0 and summary["images_per_second"] > 0
    r = run_cli("run", src, "-o", tmp_path / "out", "-m", model_file, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["skipped"] == 4
    assert run_cli("run", src, "-m", model_file, "--direction", "sideways").returncode == 2
    assert run_cli("run", src, "-m", model_file, "--shard", "3/3").returncode == 2
    assert run_cli("run", src, "-m", model_file, "--bogus-flag").returncode == 2
    missing = run_cli("run", src, "-o", tmp_path / "o2", "-m", tmp_path / "nope.pth")
    assert missing.returncode == 1 and "unknown model" in missing.stderr and "Traceback" not in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("run", empty, "-o", tmp_path / "o3", "-m", model_file)
    assert r.returncode == 1 and "no images found" in r.stderr


def test_never_writes_into_the_input_unasked(tmp_path, model_file):
    src = tmp_path / "in"
    make_tree(src)
    r = run_cli("run", ".", "-m", model_file, cwd=src)  # default output ./out would sit inside the input
    assert r.returncode == 2 and "inside the input" in r.stderr and not (src / "out").exists()
    r = run_cli("run", ".", "-m", model_file, "-o", "translated", cwd=src)  # told explicitly: fine
    assert r.returncode == 0, r.stderr
    r = run_cli("run", ".", "-m", model_file, "-o", "translated", "--json", cwd=src)
    assert json.loads(r.stdout)["skipped"] == 4  # its own outputs are not taken as new inputs


def test_shards_cover_every_file_exactly_once(tmp_path, translator):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        photo((20 + i, 16)).save(src / f"{i}.png")
    done = []
    for k in range(3):
        out = tmp_path / f"out{k}"
        translate_paths([str(src)], out, translator, RunOptions(shard=(k, 3)))
        done += [p.name for p in out.iterdir()]
    assert sorted(done) == sorted(f"{i}.png" for i in range(7))


def test_torchrun_two_ranks_split_the_work_and_report_once(tmp_path, model_file):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        photo((24, 20 + i)).save(src / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "cyclebatch", "run", str(src), "-o", str(tmp_path / "out"), "-m", str(model_file),
                        "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    start = r.stdout.index("{")
    summary = json.loads(r.stdout[start:])  # exactly one JSON document: rank 0 speaks for both
    assert summary["translated"] == 5 and summary["failed"] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in range(5)]


def test_killed_run_leaves_no_partial_outputs_and_resumes(tmp_path):
    model_file = tmp_path / "slower.pth"  # slow enough (~0.1 s an image) that the kill lands mid-run
    torch.save(tiny_generator(ngf=32, n_blocks=4).state_dict(), model_file)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        photo((160, 120)).save(src / f"{i:02d}.png")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cyclebatch", "run", str(src), "-o", str(out), "-m", str(model_file),
                             "--quiet", "--batch-size", "1"], env=env)
    deadline = time.time() + 120
    def done():  # finished outputs only: a temporary file being written also ends in .png
        return [p for p in out.glob("*.png") if not p.name.startswith(".")]

    while time.time() < deadline and len(done()) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = done()
    assert 3 <= len(finished) < 40
    for p in finished:  # every visible output decodes completely
        with Image.open(p) as im:
            im.load()
            assert im.size == (160, 120)
    r = run_cli("run", src, "-o", out, "-m", model_file, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["skipped"] == len(finished)
    assert sorted(p.name for p in out.iterdir()) == [f"{i:02d}.png" for i in range(40)]  # temp files swept


def test_help_and_the_public_api_import_torch_only_when_used():
    # `cyclebatch --help`, `runs status` and a mistyped option answer at once: the packages import their
    # APIs lazily.
    code = ("import sys, cyclebatch.cli, cyclebatch.train.status; before = 'torch' in sys.modules; "
            "from cyclebatch import load_generator, ResnetGenerator, CycleBatchError; "
            "print(before, 'torch' in sys.modules, ResnetGenerator.__module__)")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    assert r.stdout.split() == ["False", "True", "cyclebatch.models.networks"], r.stderr
    r = run_cli("--help")
    assert r.returncode == 0 and "run" in r.stdout and "export" in r.stdout
    # export checks its options before it imports the exporters (and torch).
    code = ("import sys; from cyclebatch.cli.app import main; "
            "sys.argv = ['cyclebatch', 'export', 'm.pth', 'm.tflite', '--quantize', 'int4']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    assert r.stdout.split() == ["2", "False"] and "only int8" in r.stderr, (r.stdout, r.stderr)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import cyclebatch
        cyclebatch.nope
