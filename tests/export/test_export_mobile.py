"""`cyclebatch export` to TFLite (LiteRT, fixed-size NHWC) and OpenVINO IR (any size, NCHW).

Every file is run in its own runtime, loaded here directly rather than through cyclebatch's helpers, and
compared with the PyTorch generator.
"""

import importlib.util
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from conftest import PHOTOS, run_cli, tiny_generator
from cyclebatch.export import api as ex
from cyclebatch.export import openvino as export_openvino
from cyclebatch.export import tflite as export_tflite
from cyclebatch.models.checkpoints import save_generator
from cyclebatch.errors import CycleBatchError
from test_export import reference

HAVE_TFLITE = all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"))
needs_tflite = pytest.mark.skipif(not HAVE_TFLITE, reason="the tflite extra is not installed: "
                                                          "pip install 'cyclebatch[tflite]'")

SIZE = (62, 50)  # (height, width) of the fp32 file: neither a multiple of 4, not square
SMALL = (48, 48)


def nhwc_reference(net, x: np.ndarray) -> np.ndarray:
    return reference(net, np.ascontiguousarray(x.transpose(0, 3, 1, 2))).transpose(0, 2, 3, 1)


def psnr(a, b) -> float:
    return float(10 * np.log10(1 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def photo(h, w) -> np.ndarray:
    """A real photo other than the one verification uses, fitted to h x w, NHWC [0, 1]."""
    from cyclebatch.io.images import read_image

    rgb = read_image(PHOTOS / "astronaut.png").rgb.astype(np.float32) / 255
    return np.ascontiguousarray(ex.fit(rgb, h, w)[None], dtype=np.float32)


def run_tflite(path, x: np.ndarray) -> tuple[np.ndarray, dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=2)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(out["index"]), {"input": inp, "output": out, "tensors": it.get_tensor_details(),
                                         "signatures": it.get_signature_list()}


def weight_types(path) -> set:
    """Types of the 4-D constants (the convolution weights) stored in a TFLite file, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(open(path, "rb").read()))
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return {names[t.type] for g in model.subgraphs for t in g.tensors
            if len(t.shape) == 4 and model.buffers[t.buffer].data is not None}


def int8_activations(details) -> int:
    return sum(t["dtype"] == np.int8 for t in details["tensors"] if len(t["shape"]) == 4 and t["shape"][0] == 1)


@pytest.fixture(scope="module")
def tflite_fp32(tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    return path, ex.export(tiny_generator(0), path, size=SIZE)


# ---------------------------------------------------------------- TFLite

def test_conv_transpose_rewrite_is_exact():
    # The official upsampling layer (k3, s2, p1, output_padding 1) and a U-Net one (k4, s2, p1).
    torch.manual_seed(0)
    for conv in (nn.ConvTranspose2d(6, 4, 3, 2, padding=1, output_padding=1),
                 nn.ConvTranspose2d(6, 4, 4, 2, padding=1), nn.ConvTranspose2d(6, 4, 3, 2, padding=(1, 0))):
        x = torch.randn(2, 6, 7, 5)
        with torch.no_grad():
            want, got = conv(x), export_tflite.CroppedConvTranspose2d(conv)(x)
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-5
    net = export_tflite.rewrite_for_tflite(tiny_generator(0))
    assert not any(isinstance(m, nn.ConvTranspose2d) and any(m.padding) for m in net.modules())


@needs_tflite
def test_tflite_fp32_runs_in_litert_and_matches_pytorch(tflite_fp32):
    path, result = tflite_fp32
    assert result.verified and result.format == "tflite" and result.runtime == "LiteRT" and path.is_file()
    assert result.size == SIZE and result.psnr >= 50 and "chelsea.png (50x62)" in result.sample
    x = photo(*SIZE)
    y, d = run_tflite(path, x)
    assert d["signatures"] == {"serving_default": {"inputs": ["image"], "outputs": ["translated"]}}
    assert list(d["input"]["shape"]) == [1, *SIZE, 3] and d["input"]["dtype"] == np.float32
    assert y.shape == x.shape and y.dtype == np.float32
    want = nhwc_reference(tiny_generator(0), x)
    np.testing.assert_allclose(y, want, atol=1e-4)
    assert psnr(y, want) > 80


@needs_tflite
def test_tflite_file_carries_the_contract(tflite_fp32):
    path, _ = tflite_fp32
    meta = ex.read_metadata(path)
    assert (meta["layout"], meta["channel_order"], meta["input_range"], meta["output_range"]) == \
        ("NHWC", "RGB", "[0, 1]", "[0, 1]")
    assert (meta["height"], meta["width"], meta["input_name"], meta["precision"]) == ("62", "50", "image", "fp32")
    assert "[1, 62, 50, 3]" in meta["input"] and "reflect-pads" in meta["padding"]
    assert meta["architecture"].startswith("resnet_2blocks, ngf 8")


@needs_tflite
def test_tflite_fp16_halves_the_weights_and_stays_close(tflite_fp32, tmp_path):
    fp32_path, fp32 = tflite_fp32
    path = tmp_path / "tiny16.tflite"
    result = ex.export(tiny_generator(0), path, precision="fp16", size=SIZE)
    assert result.verified and result.precision == "fp16" and 40 <= result.psnr < fp32.psnr
    x = photo(*SIZE)
    y, d = run_tflite(path, x)
    _, d32 = run_tflite(fp32_path, x)
    assert weight_types(path) == {"FLOAT16"} and weight_types(fp32_path) == {"FLOAT32"}
    assert path.stat().st_size < 0.7 * fp32_path.stat().st_size
    assert d["input"]["dtype"] == np.float32 and y.dtype == np.float32  # float32 I/O kept
    want = nhwc_reference(tiny_generator(0), x)
    assert 40 < psnr(y, want) < 110  # close, and not the fp32 file (which gives 130+)


@needs_tflite
def test_tflite_int8_calibrated_is_smaller_and_above_its_floor(tflite_fp32, tmp_path):
    fp32_path, _ = tflite_fp32
    photos = tmp_path / "calib"
    photos.mkdir()
    for name in ("coffee.png", "rocket.jpg"):
        shutil.copy(PHOTOS / name, photos / name)
    path = tmp_path / "tiny8.tflite"
    result = ex.export(tiny_generator(0), path, quantize="int8", calibrate=photos, size=SIZE)
    assert result.verified and result.precision == "int8" and result.quantization == "calibrated"
    assert 35 <= result.psnr < 80
    x = photo(*SIZE)
    y, d = run_tflite(path, x)
    # int8 in the residual blocks, float32 for the rest; int8 activations; float32 input kept.
    assert weight_types(path) == {"INT8", "FLOAT32"} and d["input"]["dtype"] == np.float32
    assert int8_activations(d) >= 4
    assert path.stat().st_size < 0.75 * fp32_path.stat().st_size
    assert psnr(y, nhwc_reference(tiny_generator(0), x)) > 30
    assert ex.read_metadata(path)["quantization"].startswith("int8 weights; int8 activations calibrated")


def test_calibration_folder_skips_unreadable_images_and_needs_one(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    shutil.copy(PHOTOS / "coffee.png", folder / "a.png")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    images, skipped = export_tflite.calibration_images(folder, (40, 30))
    assert skipped == 1 and len(images) == 1 and images[0].shape == (1, 40, 30, 3)
    assert images[0].dtype == np.float32 and 0 <= images[0].min() and images[0].max() <= 1 and images[0].std() > 0.05
    (folder / "a.png").unlink()
    with pytest.raises(CycleBatchError, match="no readable images"):
        export_tflite.calibration_images(folder, (40, 30))


@needs_tflite
def test_tflite_failed_verification_leaves_no_file(tflite_fp32, tmp_path, monkeypatch):
    # The "converter" writes another network's file: verification must catch it and keep nothing.
    other, _ = tflite_fp32
    monkeypatch.setattr(export_tflite, "export_tflite", lambda net, path, **kw: shutil.copyfile(other, path))
    out = tmp_path / "out" / "wrong.tflite"
    with pytest.raises(CycleBatchError, match=r"wrong\.tflite: verification failed: PSNR .* below the 50 dB floor"):
        ex.export(tiny_generator(1), out, size=SIZE)
    assert list(out.parent.iterdir()) == []


@needs_tflite
def test_tflite_of_the_wrong_size_fails_verification(tflite_fp32, tmp_path, monkeypatch):
    other, _ = tflite_fp32
    monkeypatch.setattr(export_tflite, "export_tflite", lambda net, path, **kw: shutil.copyfile(other, path))
    out = tmp_path / "out" / "small.tflite"
    with pytest.raises(CycleBatchError, match=r"small\.tflite: verification failed, the file does not run"):
        ex.export(tiny_generator(0), out, size=SMALL)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("fmt, module, extra", [
    ("tflite", "litert_torch", "tflite"), ("xml", "openvino", "openvino")])
def test_missing_extra_names_it_in_one_line(fmt, module, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, module, None)  # `import module` now raises ImportError
    out = tmp_path / "out" / f"a.{fmt}"
    with pytest.raises(CycleBatchError) as info:
        ex.export(tiny_generator(0), out)
    message = str(info.value)
    assert f"pip install 'cyclebatch[{extra}]'" in message and "\n" not in message
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@needs_tflite
def test_cli_exports_int8_tflite_at_the_models_size_and_checks_options(tmp_path):
    net = tiny_generator(2)
    save_generator(net, "tiny.safetensors", {"input_size": 44})
    r = run_cli("export", "tiny.safetensors", "tiny8.tflite", "--quantize", "int8")
    assert r.returncode == 0, r.stderr
    assert "int8 dynamic-range" in r.stdout and "input 1x44x44x3 NHWC" in r.stdout
    assert "verified with LiteRT on chelsea.png (44x44): PSNR" in r.stdout and "(floor 35 dB)" in r.stdout
    assert r.stderr == ""  # the converter's and runtimes' log lines are kept out
    x = photo(44, 44)
    y, d = run_tflite("tiny8.tflite", x)
    assert weight_types("tiny8.tflite") == {"INT8"} and int8_activations(d) == 0  # dynamic-range: int8 weights only
    assert psnr(y, nhwc_reference(net, x)) > 35
    for args, message in [
        (["a.onnx", "--quantize", "int8"], "apply to .tflite outputs only"),
        (["a.tflite", "--calibrate", "."], "--calibrate needs --quantize int8"),
        (["a.tflite", "--size", "3x40"], "--size 3x40: give N or WxH"),
        (["a.tflite", "--quantize", "int4"], "only int8"),
        (["a.tflite", "--quantize", "int8", "--fp16"], "do not combine it with fp16"),
        (["a.xml", "--precision", "bf16"], "use fp32 or fp16"),
    ]:
        r = run_cli("export", "tiny.safetensors", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    assert sorted(p.name for p in tmp_path.joinpath("work").iterdir()) == ["tiny.safetensors", "tiny8.tflite"]


# ---------------------------------------------------------------- OpenVINO

SHAPES = [(2, 3, 37, 50), (1, 3, 64, 48), (1, 3, 5, 7)]


@pytest.fixture(scope="module")
def ov():
    """openvino, imported and used with CI=true: its import and its converter send usage telemetry from a
    forked process (waiting up to 3 s for it) unless the user opted out or CI=true says it runs in CI.
    Tests must not use the network, nor fork a process that has JAX's threads."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CI", "true")
        yield pytest.importorskip("openvino", reason="the openvino extra is not installed: "
                                                     "pip install 'cyclebatch[openvino]'")


@pytest.fixture(scope="module")
def ir_fp32(tmp_path_factory, ov):
    path = tmp_path_factory.mktemp("ir") / "tiny.xml"
    return path, ex.export(tiny_generator(0), path)


def test_openvino_ir_runs_at_any_size_and_batch(ir_fp32, ov):
    path, result = ir_fp32
    assert result.verified and result.runtime == "OpenVINO" and result.psnr >= 50
    assert path.is_file() and path.with_suffix(".bin").is_file()
    assert result.files == (path, path.with_suffix(".bin")) and result.bytes > path.with_suffix(".bin").stat().st_size
    model = ov.Core().read_model(str(path))
    assert model.inputs[0].get_names() == {"image"} and model.outputs[0].get_names() == {"translated"}
    assert model.inputs[0].get_partial_shape().is_dynamic
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for i, shape in enumerate(SHAPES):
        x = np.random.default_rng(i).random(shape, dtype=np.float32)
        y = compiled({"image": x})["translated"]
        assert y.shape == shape
        np.testing.assert_allclose(y, reference(tiny_generator(0), x), atol=1e-4)
    meta = ex.read_metadata(path)
    assert (meta["layout"], meta["input_name"], meta["precision"]) == ("NCHW", "image", "fp32")


def test_openvino_fp16_compresses_the_weights(ir_fp32, ov, tmp_path):
    fp32_path, fp32 = ir_fp32
    path = tmp_path / "tiny16.xml"
    result = ex.export(tiny_generator(0), path, fp16=True)
    assert result.verified and result.precision == "fp16" and 40 <= result.psnr < fp32.psnr
    sizes = [p.with_suffix(".bin").stat().st_size for p in (path, fp32_path)]
    assert sizes[0] < 0.55 * sizes[1]
    assert "f16" in path.read_text()  # the constants' element type in the IR
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(5).random((1, 3, 45, 33), dtype=np.float32)
    np.testing.assert_allclose(compiled({"image": x})["translated"], reference(tiny_generator(0), x), atol=0.02)
    assert ex.read_metadata(path)["precision"] == "fp16"


def test_openvino_failed_verification_leaves_neither_file(ir_fp32, ov, tmp_path, monkeypatch):
    other, _ = ir_fp32

    def wrong(net, path, **kw):
        shutil.copyfile(other, path)
        shutil.copyfile(other.with_suffix(".bin"), path.with_suffix(".bin"))

    monkeypatch.setattr(export_openvino, "export_openvino", wrong)
    out = tmp_path / "out" / "wrong.xml"
    with pytest.raises(CycleBatchError, match=r"wrong\.xml: verification failed: PSNR .* below the 50 dB floor"):
        ex.export(tiny_generator(1), out)
    assert list(out.parent.iterdir()) == []


def test_openvino_refuses_to_overwrite_a_lone_bin(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"someone else's weights")
    with pytest.raises(CycleBatchError, match=r"a\.bin: exists; pass --overwrite"):
        ex.export(tiny_generator(0), tmp_path / "a.xml")
    assert (tmp_path / "a.bin").read_bytes() == b"someone else's weights"
