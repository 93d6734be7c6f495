"""Every failure is one line naming the file and the reason, never a traceback, whatever the terminal, the
file names or the arguments; the checks come before the work they would waste."""

import os
import pickle
import random
import re
import struct
import subprocess
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import PHOTOS, ROOT, run_cli, tiny_generator
from cyclebatch import CycleBatchError
from cyclebatch.models.checkpoints import read_tensors
from cyclebatch.engine.translator import Translator
from cyclebatch.io.images import read_image
from cyclebatch.run.pipeline import RunOptions, translate_paths
from cyclebatch.models.registry import resolve

# What a message line may start with: anything else on stderr is a continuation of a wrapped or
# multi-line message (or a traceback).
LINE_STARTS = ("error:", "note:", "warning:", "translated ", "skipping ", "interrupted:", "Usage:", "Try ",
               "Error:", "wrote ")


def one_line_each(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and "╭" not in stderr, stderr
    assert all(line.startswith(LINE_STARTS) for line in lines), stderr
    return lines


def plain_env(**extra) -> dict:
    """As in a log or CI: stderr not a terminal, and no COLUMNS to hide an 80-column wrap."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TERMINAL_WIDTH")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def cli(*args, cwd=None, timeout=300):
    env = plain_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS") or str(torch.get_num_threads()))
    return subprocess.run([os.sys.executable, "-m", "cyclebatch", *map(os.fsdecode, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, errors="surrogateescape")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_generator().state_dict(), path)
    return path


def photos(folder, n=2, size=(40, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    im = Image.open(PHOTOS / "coffee.png").convert("RGB").resize(size)
    for i in range(n):
        im.save(folder / f"p{i}.png")
    return folder


# ---------------------------------------------------------------- checkpoints of the wrong shape

def wrong_shape(tmp_path):
    sd = tiny_generator().state_dict()
    k = "model.10.conv_block.1.weight"
    sd[k] = torch.zeros(sd[k].shape[0], sd[k].shape[1] + 1, *sd[k].shape[2:])
    torch.save(sd, tmp_path / "bad.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "bad.safetensors")
    return tmp_path / "bad.pth", tmp_path / "bad.safetensors"


def test_a_checkpoint_with_a_wrong_shape_is_one_line_in_every_command(tmp_path):
    pth, st = wrong_shape(tmp_path)
    photos(tmp_path / "in", 1)
    synth = tmp_path / "clip.mp4"
    import av

    with av.open(str(synth), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cases = [("run", tmp_path / "in", "-o", tmp_path / "o", "-m", pth),
             ("models", "info", st),
             ("export", pth, tmp_path / "x.pt", "--no-verify"),
             ("models", "convert", st, tmp_path / "x.safetensors"),
             ("video", synth, tmp_path / "v.mp4", "-m", st)]
    for args in cases:
        r = cli(*args)
        lines = one_line_each(r.stderr)
        assert r.returncode == 1 and len(lines) == 1, (args, r.stderr)
        assert "model.10.conv_block.1.weight has shape [32, 33, 3, 3]" in lines[0] and "bad." in lines[0], lines
        assert "needs [32, 32, 3, 3]" in lines[0]
        assert "clip.mp4" not in lines[0]  # the model is to blame, not the input
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.pt").exists() and not (tmp_path / "v.mp4").exists()


def test_a_plain_pickle_is_refused_without_torchs_warnings(tmp_path):
    path = tmp_path / "weights.pth"
    with open(path, "wb") as f:
        pickle.dump({k: v.numpy() for k, v in tiny_generator().state_dict().items()}, f, protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CycleBatchError, match="a plain Python pickle"):
            read_tensors(path)
    assert not [w for w in caught if "file an issue" in str(w.message) or "protocol" in str(w.message)]
    legacy = tmp_path / "legacy.pth"  # torch.save's pre-1.6 format is a pickle too, and is still read
    torch.save(tiny_generator().state_dict(), legacy, _use_new_zipfile_serialization=False)
    payload, _ = read_tensors(legacy)
    assert "model.1.weight" in payload


# ---------------------------------------------------------------- export and convert: where they write

def mount_tmpfs(path, options):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    return path


def test_export_and_convert_refuse_unwritable_places_in_one_line(tmp_path, model_file):
    (tmp_path / "afile").write_text("mine")
    small = mount_tmpfs(tmp_path / "small", "size=96k")
    readonly = mount_tmpfs(tmp_path / "ro", "ro,size=1M")
    try:
        cases = [
            (("models", "convert", model_file, tmp_path / "afile" / "x.safetensors"), 2, "afile is a file"),
            (("export", model_file, tmp_path / "afile" / "x.onnx"), 2, "afile is a file"),
            (("models", "convert", model_file, readonly / "x.safetensors"), 1, "read-only"),
            (("export", model_file, readonly / "x.xml"), 1, "read-only"),
            (("models", "convert", model_file, small / "x.safetensors"), 1, "the disk is full"),
            (("export", model_file, small / "x.pt", "--no-verify"), 1, "the disk is full"),  # torch's writer aborted
        ]
        for args, code, says in cases:
            r = cli(*args)
            lines = one_line_each(r.stderr)
            assert r.returncode == code and len(lines) == 1 and says in lines[0], (args, r.returncode, r.stderr)
        assert "MiB free there" in lines[0]
        assert list(small.iterdir()) == [] and (tmp_path / "afile").read_text() == "mine"
    finally:
        for m in (small, readonly):
            subprocess.run(["umount", str(m)], capture_output=True)


# ---------------------------------------------------------------- logs, pipes, names

def test_messages_stay_one_line_in_a_log(tmp_path, model_file):
    photos(tmp_path / "in", 1)
    deep = tmp_path / ("a-folder-with-a-long-name-" * 3) / ("and-another-one-" * 3) / "out"
    r = cli("run", tmp_path / "in", "-o", deep, "-m", model_file)
    assert r.returncode == 0, r.stderr
    assert not r.stderr.startswith("\n")  # no stray line from a progress bar that never showed
    lines = one_line_each(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("translated 1") and lines[0].endswith(str(deep)), r.stderr
    r = cli("run", tmp_path / "in", "--no-such-option")
    lines = one_line_each(r.stderr)
    assert r.returncode == 2 and any(line.startswith("Error: No such option: --no-such-option") for line in lines)
    r = cli("run", tmp_path / "in", "-o", deep, "-m", model_file, "--json", "--overwrite")
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.lstrip().startswith("{")


def test_file_names_with_newlines_odd_bytes_and_brackets_stay_one_line_each(tmp_path, model_file):
    src = tmp_path / "in"
    src.mkdir()
    names = [b"bad\nname.png", b"caf\xe9.png", b"[draft] x.png", b"-dash.png"]
    for n in names:
        with open(os.path.join(os.fsencode(src), n), "wb") as f:
            f.write(b"not an image")
    r = cli("run", src, "-o", tmp_path / "o", "-m", model_file)
    lines = one_line_each(r.stderr)
    errors = [line for line in lines if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 4, r.stderr
    text = "\n".join(errors)
    assert "$'" in text and "bad\\nname.png" in text  # the newline named, quoted as a shell would
    assert "caf\\xe9.png" in text  # the real byte, not a replacement character
    assert "[draft] x.png" in text and "-dash.png" in text  # brackets are not eaten as markup


def test_help_texts_keep_the_brackets_of_install_hints():
    import typer.main

    from cyclebatch.cli.app import app

    env = plain_env(COLUMNS="1000")
    root = typer.main.get_command(app)
    checked = 0
    for name, cmd in root.commands.items():
        helps = [p.help for p in cmd.params if getattr(p, "help", None) and "[" in p.help]
        if not helps:
            continue
        shown = subprocess.run([os.sys.executable, "-m", "cyclebatch", name, "--help"], env=env,
                               capture_output=True, text=True).stdout
        shown = re.sub(r"\s+", " ", shown.replace("│", " "))
        for h in helps:
            for bracketed in re.findall(r"\\?\[[^\]]*\]", h):
                assert bracketed.lstrip("\\") in shown, (name, bracketed)
                checked += 1
    assert checked >= 3  # cyclebatch[openvino], cyclebatch[ray], [default: out] at least


# ---------------------------------------------------------------- checked before the work

def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path):
    photos(tmp_path / "in", 1)
    (tmp_path / "taken").write_text("mine")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        # A model that does not exist: the output is checked first, so it is never looked for.
        r = cli("run", tmp_path / "in", "-o", out, "-m", tmp_path / "no-model.pth")
        lines = one_line_each(r.stderr)
        assert r.returncode == 2 and len(lines) == 1 and "is a file" in lines[0], r.stderr
    assert (tmp_path / "taken").read_text() == "mine"


def test_missing_inputs_are_named_before_the_model_is_looked_for(tmp_path):
    r = cli("run", tmp_path / "nope", b"/tmp/also\nmissing", "-m", tmp_path / "no-model.pth")
    lines = one_line_each(r.stderr)
    assert r.returncode == 1 and len(lines) == 2 and all("no such file or folder" in line for line in lines)
    assert "also\\nmissing" in lines[1]


def test_nonsense_sizes_are_usage_errors(tmp_path):
    photos(tmp_path / "in", 1)
    for args in (("--max-memory", "-5G"), ("--max-memory", "0"), ("--max-memory", "nan"), ("--max-pixels", "-5")):
        r = cli("run", tmp_path / "in", "-o", tmp_path / "o", "-m", tmp_path / "no-model.pth", *args)
        one_line_each(r.stderr)
        assert r.returncode == 2, (args, r.stderr)
    assert not (tmp_path / "o").exists()


def test_an_unknown_model_name_suggests_the_closest():
    with pytest.raises(CycleBatchError, match=r"did you mean vintage\?"):
        resolve("vintge")
    with pytest.raises(CycleBatchError, match=r"did you mean horse2zebra\?"):
        resolve("horse2zebr")
    with pytest.raises(CycleBatchError) as e:
        resolve("xyzzy-not-a-model")
    assert "did you mean" not in str(e.value)


# ---------------------------------------------------------------- images

def test_too_small_images_and_working_sizes_say_so(tmp_path):
    tr = Translator(tiny_generator(), device="cpu", precision="fp32")
    with pytest.raises(CycleBatchError, match="3x4 is too small for this model: each side must be at least 5 px"):
        tr.translate(np.zeros((4, 3, 3), np.uint8))
    assert tr.translate(np.zeros((5, 5, 3), np.uint8)).shape == (5, 5, 3)
    src = photos(tmp_path / "in", 1, size=(451, 300))
    for opts in (RunOptions(max_size=4), RunOptions(scale=0.01)):
        s = translate_paths([str(src)], tmp_path / "o", tr, opts)
        assert s.failed == 1 and "too small" in s.failures[0][1] and "--max-size/--scale" in s.failures[0][1]
    from cyclebatch.video.api import translate_video

    with pytest.raises(CycleBatchError, match=r"clip.mp4: 4x2 is too small .* --max-size/--scale.*was not written"):
        translate_video(ROOT / "examples" / "clip.mp4", tmp_path / "v.mp4", tr, max_size=4, temporal="off")
    assert not (tmp_path / "v.mp4").exists()


def png_claiming(w, h) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_a_header_claiming_more_pixels_than_its_bytes_hold_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_claiming(100_000, 100_000))  # 10^10 pixels in 45 bytes: 30 GB if decoded
    with pytest.raises(CycleBatchError, match="cannot hold"):
        read_image(p, max_pixels=10**12)
    real = tmp_path / "flat.png"  # a real, highly compressible image passes
    Image.new("1", (4000, 4000)).save(real, optimize=True)
    assert read_image(real, max_pixels=10**12).size == (4000, 4000)


def test_gifs_are_named_not_dropped_and_animations_not_cut_to_one_frame(tmp_path):
    src = photos(tmp_path / "in", 1)
    a = Image.open(PHOTOS / "coffee.png").convert("RGB").resize((40, 32))
    a.save(src / "anim.gif", save_all=True, append_images=[a.rotate(30)], duration=100, loop=0)
    a.save(src / "still.gif")
    tr = Translator(tiny_generator(), device="cpu", precision="fp32")
    s = translate_paths([str(src)], tmp_path / "o1", tr)
    assert s.translated == 1 and s.failed == 0 and s.ignored == {".gif": 2}
    # Named directly: refused before translating, saying what to do.
    s = translate_paths([str(src / "still.gif")], tmp_path / "o2", tr)
    assert s.failed == 1 and "--ext png" in s.failures[0][1] and not (tmp_path / "o2").exists()
    s = translate_paths([str(src / "still.gif"), str(src / "anim.gif")], tmp_path / "o3", tr, RunOptions(ext=".png"))
    assert s.translated == 1 and (tmp_path / "o3" / "still.png").exists()
    assert s.failed == 1 and "an animation (2 frames)" in s.failures[0][1] and "cyclebatch video" in s.failures[0][1]


# ---------------------------------------------------------------- fuzz

OPTION_VALUES = {
    "--max-size": ["0", "-3", "4", "99999999999", "x"], "--scale": ["0", "-1", "nan", "0.01", "9"],
    "--max-pixels": ["-1", "0", "1", "1e3"], "--max-memory": ["-5G", "0", "1", "lots", "1K"],
    "--tile": ["-1", "8", "31", "32"], "--ext": ["gif", "", ".PNG", "exe"], "--quality": ["0", "101", "50"],
    "--shard": ["1/0", "3/2", "-1/2", "0/1", "a/b"], "--direction": ["BtoA", "sideways", ""],
    "--batch-size": ["0", "-2", "1"], "--device": ["cpu", "tpu", "cuda:99"], "--precision": ["fp32", "fp8"],
    "--workers": ["-1", "1"], "--storage-options": ["{", "[]", "{}"],
}
WEIRD_NAMES = [b"-leading-dash.png", b"new\nline.png", b"\xff\xfe.png", b"sp ace [x].png", b"--help.png",
               b"tab\there.png", b"\x1b[31mred.png"]


def test_fuzzed_arguments_and_names_fail_in_one_line_each(tmp_path, model_file):
    rng = random.Random(20261206)
    src = tmp_path / "in"
    photos(src, 1)
    for n in WEIRD_NAMES:
        with open(os.path.join(os.fsencode(src), n), "wb") as f:
            f.write(rng.choice([b"", b"junk", (PHOTOS / "coffee.png").read_bytes()[:300]]))
    for case in range(14):
        args = ["run", src, "-m", model_file, "-o", tmp_path / f"o{case}"]
        for opt in rng.sample(sorted(OPTION_VALUES), rng.randint(1, 3)):
            args += [opt, rng.choice(OPTION_VALUES[opt])]
        if rng.random() < 0.3:
            args.insert(1, os.path.join(os.fsencode(src), rng.choice(WEIRD_NAMES)))
        r = cli(*args, timeout=120)
        one_line_each(r.stderr)
        assert r.returncode in (0, 1, 2), (args, r.returncode, r.stderr)
        if r.returncode == 0:
            assert "error:" not in r.stderr
        else:
            assert "error:" in r.stderr or "Error:" in r.stderr, (args, r.stderr)


VIDEO_VALUES = {
    "--start": ["-1", "0.2", "99", "nan"], "--duration": ["0", "-2", "0.3", "1e9"], "--fps": ["0", "-5", "12"],
    "--crf": ["-1", "99", "23"], "--preset": ["warp", "ultrafast"], "--codec": ["nope", "libvpx-vp9", "gif"],
    "--temporal": ["sideways", "off", "stats"], "--max-size": ["4", "48"], "--scale": ["0.01", "0.2"],
    "--tile": ["8", "32"], "--max-memory": ["-1G", "64M"], "--batch-size": ["0", "2"],
}
VIDEO_OUTPUTS = ["o.mp4", "o.webm", "o.avi", "o.gif", "o.mkv", "o.xyz", "frames", "-dash.mp4", "new\nline.mp4"]


def test_fuzzed_video_arguments_fail_in_one_line_each(tmp_path, model_file):
    rng = random.Random(20261207)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes((ROOT / "examples" / "clip.mp4").read_bytes())
    for case in range(10):
        out = tmp_path / f"c{case}"
        out.mkdir()
        args = ["video", clip, out / rng.choice(VIDEO_OUTPUTS), "-m", model_file, "--duration", "0.3", "--max-size", "48"]
        for opt in rng.sample(sorted(VIDEO_VALUES), rng.randint(1, 3)):
            args += [opt, rng.choice(VIDEO_VALUES[opt])]
        r = cli(*args, timeout=120)
        lines = one_line_each(r.stderr)
        assert r.returncode in (0, 1, 2), (args, r.returncode, r.stderr)
        if r.returncode:
            assert lines and ("error:" in r.stderr or "Error:" in r.stderr), (args, r.stderr)
            assert not [p for p in out.rglob("*") if p.is_file()], (args, "a failed run left a file")


def test_help_describes_every_option_and_shows_flags_as_flags():
    import typer.main

    from cyclebatch.cli.app import _plain_metavars, app

    _plain_metavars(app)
    commands, missing = [((), typer.main.get_command(app))], []
    while commands:
        path, cmd = commands.pop()
        if hasattr(cmd, "commands"):
            commands += [((*path, n), c) for n, c in cmd.commands.items()]
            continue
        missing += [f"{' '.join(path)} {p.name}" for p in cmd.params if not getattr(p, "help", None)]
    assert missing == []
    shown = subprocess.run([os.sys.executable, "-m", "cyclebatch", "run", "--help"], env=plain_env(COLUMNS="200"),
                           capture_output=True, text=True).stdout
    assert "{INPUTS}..." in shown and "{inputs}" not in shown
    overwrite = next(line for line in shown.splitlines() if "--overwrite" in line)
    assert "<bool>" not in overwrite  # a flag takes no value
