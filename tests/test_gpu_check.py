"""benchmarks/gpu_check.py kept from rotting: its CPU quick run, read back from the JSON it writes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyclebatch.models.networks import ResnetGenerator

from conftest import ROOT
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CPU_SECTIONS = ("environment", "raw", "j_style", "fidelity", "end_to_end", "first_batch", "oom", "tiling", "training")
CUDA_SECTIONS = ("memory", "oom_real", "compiled")


def run_check(out: Path, *args: str, pythonpath: tuple = (), timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(ROOT)]),
           "CYCLEBATCH_HOME": str(out.parent / "cbhome")}
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "quick.json"
    p = run_check(out)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return json.loads(out.read_text()), p.stdout


def db(value) -> float:
    """A PSNR from the JSON: identical pictures are written as the string "inf" (JSON has no infinity)."""
    return float("inf") if value == "inf" else value


def section(doc: dict, name: str) -> dict:
    e = doc["sections"][name]
    assert e["status"] == "ok", f"{name}: {e.get('reason') or e.get('error')}\n{e.get('traceback', '')}"
    return e["result"]


def test_every_section_that_a_cpu_can_run_ran(quick):
    doc, _ = quick
    assert doc["finished"] is True
    for name in CPU_SECTIONS:
        section(doc, name)
    assert doc["model"]["source"].startswith("random tiny")
    env = section(doc, "environment")
    assert set(env["cpu"]) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}


def test_video_ran_or_said_why_not(quick):
    doc, _ = quick
    if importlib.util.find_spec("av") is None:
        assert doc["sections"]["video"]["status"] == "skipped" and "av" in doc["sections"]["video"]["reason"]
        return
    entries = section(doc, "video")["entries"]
    assert len(entries) == 4  # two clips, each with the default flow stabiliser and with shared statistics
    assert sorted((e["clip"], e["temporal"]) for e in entries) == sorted(
        (c, t) for c in {e["clip"] for e in entries} for t in ("flow", "stats"))
    for e in entries:
        assert e["frames"] == 12 and e["frames_per_s"] > 0 and e["raw_frames_per_s"] > 0


def test_cuda_only_parts_are_skipped_with_a_reason(quick):
    doc, _ = quick
    for name in CUDA_SECTIONS:
        e = doc["sections"][name]
        assert e["status"] == "skipped" and "CUDA" in e["reason"], (name, e)
    raw = section(doc, "raw")["entries"]
    for prec in ("tf32", "fp16"):
        skipped = [e for e in raw if e["precision"] == prec]
        assert skipped and all(e["status"] == "skipped" and "CUDA" in e["reason"] for e in skipped)
    training = {e["precision"]: e for e in section(doc, "training")["entries"]}
    assert training["fp16"]["status"] == "skipped" and training["fp16"]["reason"]


def test_throughput_figures_are_positive(quick):
    doc, _ = quick
    measured = [e for e in section(doc, "raw")["entries"] if e["status"] == "ok"]
    # two sizes x fp32 and bf16 x both layouts at batch 1 (the automatic batch is 1 on a CPU)
    assert len(measured) == 8
    for e in measured:
        assert e["images_per_s"] > 0 and e["batch"] == 1 and e["passes"] >= 2
    assert all(e["images_per_s"] > 0 for e in section(doc, "j_style")["entries"])
    assert all(e["third_s"] > 0 for e in section(doc, "first_batch")["entries"])


def test_end_to_end_translated_every_image(quick):
    doc, _ = quick
    entries = section(doc, "end_to_end")["entries"]
    assert [e["size"] for e in entries] == ["64x64", "96x80"]
    for e in entries:
        assert e["translated"] == e["images"] == 8 and e["failed"] == 0
        assert e["run_images_per_s"] > 0 and e["ratio"] > 0
        assert e["batch_sizes"] == {"1": 8}


def test_fidelity(quick):
    doc, _ = quick
    entries = section(doc, "fidelity")["entries"]
    repeats = [e for e in entries if e["precision"] == "fp32 reference, repeated"]
    assert len(repeats) == 2
    for e in repeats:  # the reference itself is deterministic
        assert e["psnr_db"] == "inf" and e["max_levels"] == 0 and e["non_finite"] == 0
    for e in (e for e in entries if e["precision"] == "fp32"):  # Winograd F(4,3): fp32 to rounding
        assert e["winograd"] == 4 and e["psnr_db"] > 90 and e["max_levels"] < 0.05
    bf16 = [e for e in entries if e["precision"] == "bf16"]
    assert len(bf16) == 2
    for e in bf16:
        assert isinstance(e["psnr_db"], float) and 35 < e["psnr_db"] < 90 and e["non_finite"] == 0


def test_forced_out_of_memory_recovered(quick):
    doc, _ = quick
    oom = section(doc, "oom")
    batch = oom["batch"]
    assert batch["all_back"] and batch["images_back"] == batch["images_in"] == 8
    assert batch["out_of_memory"] == 2 and batch["settled_batch"] == 2  # 8 -> 4 -> 2
    assert batch["batch_sizes"] == {"2": 4} and batch["forward_calls"][:3] == [8, 4, 2]
    assert batch["identical_to_unforced"]
    single = oom["single image"]
    assert single["all_back"] and single["out_of_memory"] >= 1 and single["tiled_images"] == 1
    assert db(single["vs_unforced"]["psnr_db"]) > 35  # "inf" when identical (seen on an AVX2-only CPU, fp32)


def test_tiling_against_full_frame(quick):
    doc, _ = quick
    t = section(doc, "tiling")
    assert t["tiled"]["plan"]["tile"] == 64 and t["tiled"]["seconds"] > 0
    assert t["full"]["fell_back_to_tiles"] is False
    assert db(t["tiled_vs_full"]["psnr_db"]) > 35


def test_training_steps(quick):
    doc, _ = quick
    entries = {e["precision"]: e for e in section(doc, "training")["entries"]}
    for prec in ("fp32", "bf16"):
        e = entries[prec]
        assert e["status"] == "ok" and e["steps"] == 2 and e["ms_per_step"] > 0 and 0 <= e["data_wait_share"] < 1


def test_targets_and_tables(quick):
    doc, stdout = quick
    target = lambda prefix: next(t for t in doc["targets"] if t["target"].startswith(prefix))  # noqa: E731
    assert len(doc["targets"]) == 7
    for t in doc["targets"]:
        assert t["pass"] in (True, False, None) and t["detail"]
        if t["pass"] is not None:
            assert isinstance(t["value"], float)
    assert target("fp16 raw")["pass"] is None and "CUDA" in target("fp16 raw")["detail"]
    assert target("fp16 >=")["pass"] is None and "CUDA" in target("fp16 >=")["detail"]
    assert target("bf16 >=")["pass"] is True  # 52 dB here for the tiny model
    assert target("run end to end")["detail"].endswith("8/8 translated")
    for title in ("raw model throughput", "J-style loop", "fidelity against true fp32", "translate_paths end to end",
                  "forced out of memory", "training steps", "targets (each a ratio"):
        assert title in stdout


def test_a_missing_package_skips_its_section(tmp_path):
    stub = tmp_path / "stub" / "av"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    out = tmp_path / "noav.json"
    p = run_check(out, "--only", "video", pythonpath=(tmp_path / "stub",), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    video = doc["sections"]["video"]
    assert video["status"] == "skipped" and "PyAV" in video["reason"] and "blocked by the test" in video["reason"]
    assert doc["sections"]["raw"]["reason"] == "not selected (--only)"
    assert doc["sections"]["environment"]["status"] == "ok"  # always runs


def test_spent_budget_skips_the_rest(tmp_path):
    out = tmp_path / "budget.json"
    p = run_check(out, "--budget-s", "0", "--only", "environment,raw,fidelity", timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["sections"]["environment"]["status"] == "ok"
    for name in ("raw", "fidelity"):
        assert doc["sections"][name]["status"] == "skipped" and "time budget" in doc["sections"][name]["reason"]
    assert doc["finished"] is True


def load_script():
    if "gpu_check" not in sys.modules:  # registered first: its dataclasses look their module up by name
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


def test_flops_of_the_official_generator():
    gc = load_script()
    assert gc.conv_gflop(ResnetGenerator(), 256, 256) == pytest.approx(99.1, abs=0.1)  # 49.6 G multiply-adds
    assert gc.conv_gflop(ResnetGenerator(), 1920, 1080) == pytest.approx(99.1 * 1920 * 1080 / 256**2, rel=1e-3)


def test_fp16_peak_table():
    gc = load_script()
    assert gc.dense_fp16_peak("NVIDIA H200") == 989
    assert gc.dense_fp16_peak("NVIDIA H200 NVL") == 835
    assert gc.dense_fp16_peak("NVIDIA H100 PCIe") == 756
    assert gc.dense_fp16_peak("NVIDIA H100 80GB HBM3") == 989
    assert gc.dense_fp16_peak("NVIDIA A100-SXM4-80GB") == 312
    assert gc.dense_fp16_peak("NVIDIA L4") == 121
    assert gc.dense_fp16_peak("NVIDIA L40S") == 362
    assert gc.dense_fp16_peak("NVIDIA L40") == 181
    assert gc.dense_fp16_peak("Tesla T4") == 65
    assert gc.dense_fp16_peak("NVIDIA GeForce RTX 4090") == 165
    assert gc.dense_fp16_peak("NVIDIA GeForce RTX 3060") is None


def test_json_has_no_bare_infinity():
    gc = load_script()
    got = gc.jsonable({"a": float("inf"), "b": [float("nan"), 1.5], 3: Path("x")})
    assert got == {"a": "inf", "b": [None, 1.5], "3": "x"}
