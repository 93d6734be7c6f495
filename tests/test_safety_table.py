"""Every row of README's Safety table is checked against the program: its exit code by running the case
here where that takes seconds, else by the named test that reproduces it (which asserts the code itself).
A row added to the README without a check here fails this test."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import PHOTOS, ROOT, tiny_generator

README = ROOT / "README.md"


def table_rows() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text[text.index("## Safety: what is guaranteed"):]
    section = section[:section.index("\n## ", 5)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] not in ("case", "---"):
            rows.append((cells[0], cells[2]))
    return rows


def codes(cell: str) -> set[int]:
    return {int(n) for n in re.findall(r"\b\d+\b", cell)}


def cli(*args, cwd=None) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cyclebatch", *map(os.fsdecode, args)], cwd=cwd, env=env,
                          capture_output=True, timeout=300).returncode


class Case:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.model = tmp / "tiny.pth"
        torch.save(tiny_generator().state_dict(), self.model)
        self.src = tmp / "in"
        self.src.mkdir()
        Image.open(PHOTOS / "coffee.png").convert("RGB").resize((24, 16)).save(self.src / "a.png")

    def run(self, *args, inputs=None) -> int:
        return cli("run", *(inputs or [self.src]), "-m", self.model, *args)


def output_exists(c):
    c.run("-o", c.tmp / "o")
    return c.run("-o", c.tmp / "o")


def corrupt(c):
    (c.src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return c.run("-o", c.tmp / "o")


def pixel_bomb(c):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    (c.src / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10**5, 10**5, 8, 2, 0, 0, 0))
                                     + chunk(b"IEND", b""))
    return c.run("-o", c.tmp / "o", "--max-pixels", str(10**11))


def too_small(c):
    return c.run("-o", c.tmp / "o", "--max-size", "4")


def other_pictures(c):
    Image.new("RGB", (8, 8)).save(c.src / "x.gif")
    return c.run("-o", c.tmp / "o")


def gif_named(c):
    Image.new("RGB", (8, 8)).save(c.src / "x.gif")
    return c.run("-o", c.tmp / "o", inputs=[c.src / "x.gif"])


def fifo(c):
    os.mkfifo(c.src / "pipe.png")
    return c.run("-o", c.tmp / "o")


def no_input(c):
    return c.run("-o", c.tmp / "o", inputs=[c.tmp / "missing"])


def odd_names(c):
    with open(os.path.join(os.fsencode(c.src), b"new\nline\xff.png"), "wb") as f:
        f.write(b"junk")
    return c.run("-o", c.tmp / "o")


def output_is_file(c):
    (c.tmp / "taken").write_text("mine")
    return c.run("-o", c.tmp / "taken")


def default_output_inside(c):
    return cli("run", ".", "-m", c.model, cwd=c.src)


def bad_option(c):
    return c.run("-o", c.tmp / "o", "--max-memory", "-5G")


def export_unwritable(c):
    (c.tmp / "taken").write_text("mine")
    return cli("models", "convert", c.model, c.tmp / "taken" / "x.safetensors")


def code_checkpoint(c):
    torch.save(tiny_generator(), c.tmp / "code.pth")
    return cli("models", "info", c.tmp / "code.pth")


def malformed(c):
    (c.tmp / "cut.pth").write_bytes(c.model.read_bytes()[:1000])
    return cli("models", "info", c.tmp / "cut.pth")


def nan_weights(c):
    sd = tiny_generator().state_dict()
    sd["model.1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, c.tmp / "nan.pth")
    return cli("models", "info", c.tmp / "nan.pth")


def video_output_exists(c):
    (c.tmp / "out.mp4").write_text("precious")
    return cli("video", ROOT / "examples" / "clip.mp4", c.tmp / "out.mp4", "-m", c.model)


def not_a_video(c):
    (c.tmp / "noise.mp4").write_bytes(os.urandom(4096))
    return cli("video", c.tmp / "noise.mp4", c.tmp / "out.mp4", "-m", c.model)


def unknown_model(c):
    return cli("models", "info", "vintge")


# The first cell's distinctive words -> a case run here, or the test that reproduces it.
CHECKS = {
    "output already exists": output_exists,
    "killed at any moment": "test_run.py::test_killed_run_leaves_no_partial_outputs_and_resumes",
    "several writers share an output folder": "test_temp_sweep.py::test_a_live_writer_in_another_pid_namespace_keeps_its_file",
    "truncated, corrupt, empty": corrupt,
    "pixel bomb": pixel_bomb,
    "over `--max-pixels`": "test_cli_messages.py::test_a_header_claiming_more_pixels_than_its_bytes_hold_is_refused_before_decoding",
    "under the model's minimum": too_small,
    "pictures `run` does not read": other_pictures,
    "a GIF named directly": gif_named,
    "a FIFO, socket or device": fifo,
    "no input exists": no_input,
    "file names with newlines": odd_names,
    "`-o` is a file": output_is_file,
    "default output folder inside an input folder": default_output_inside,
    "an option value that cannot work": bad_option,
    "output disk full": "test_safety.py::test_cli_reports_a_full_disk_in_one_line_with_exit_code_1",
    "`export` / `models convert`": export_unwritable,
    "checkpoint carrying Python code": code_checkpoint,
    "malformed checkpoint": malformed,
    "NaN or infinite weights": nan_weights,
    "NaN or infinite output": "test_engine.py::test_reduced_precision_overflow_is_rerun_in_fp32_and_said_once",
    "out of GPU memory": "test_engine.py::test_a_folder_survives_out_of_memory_with_every_image",
    "download over the size limit": "test_downloads.py::test_an_announced_size_over_the_limit_is_refused_before_reading",
    "an unknown model name": unknown_model,
    "`video`: the output, the `--compare` file": video_output_exists,
    "`video`: not a video": not_a_video,
    "`video`: truncated": "test_video_safety.py::test_cli_truncated_clip_is_one_line_exit_1",
    "`video`: an audio codec": "test_video_safety.py::test_cli_audio_into_containers_that_cannot_take_it_no_traceback",
    "`video`: disk full": "test_video_safety.py::test_disk_full_reports_the_space_free_when_the_write_failed",
    "`video`: killed": "test_video.py::test_cli_interrupt_says_so_and_leaves_nothing",
    "training out of disk": "test_train_safety.py::test_a_real_full_disk_during_a_checkpoint_write_stops_in_one_line_naming_the_checkpoint",
    "training killed": "test_train_safety.py::test_sigkill_anywhere_even_inside_a_checkpoint_write_resumes_cleanly",
}


def check_for(case: str):
    found = [v for k, v in CHECKS.items() if k in case]
    assert len(found) == 1, f"README Safety row '{case}' has {len(found)} checks in tests/test_safety_table.py"
    return found[0]


def test_every_row_has_exactly_one_check():
    rows = table_rows()
    assert len(rows) >= 20
    for case, _ in rows:
        check = check_for(case)
        if isinstance(check, str):  # the named test exists
            file, name = check.split("::")
            found = list((ROOT / "tests").rglob(file))
            assert len(found) == 1, f"{check}: no single {file} under tests/"
            assert re.search(rf"^def {re.escape(name)}\(", found[0].read_text(), re.M), check


@pytest.mark.parametrize("case,code", [r for r in table_rows() if callable(CHECKS.get(next(
    (k for k in CHECKS if k in r[0]), ""), None))], ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_the_exit_code_of_each_row_is_what_the_program_returns(tmp_path, case, code):
    rc = check_for(case)(Case(tmp_path))
    assert rc in codes(code), f"'{case}': the README says {code}, the program returned {rc}"
