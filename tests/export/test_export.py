"""`cyclebatch export`: ONNX and TorchScript files that run at any size and match PyTorch."""

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import run_cli, tiny_generator
from cyclebatch import __version__
from cyclebatch.export import api as ex
from cyclebatch.models.checkpoints import save_generator
from cyclebatch.errors import CycleBatchError
from cyclebatch.io.files import is_temp
from cyclebatch.models.networks import pad_to_multiple

# Odd sizes (no side a multiple of 4), the smallest supported side, and a second batch size.
SHAPES = [(2, 3, 37, 50), (1, 3, 64, 48), (1, 3, 5, 7)]


def reference(net, x: np.ndarray) -> np.ndarray:
    """The generator on [0, 1] pixels, written independently of export_graph.PixelGraph."""
    t = torch.from_numpy(x) * 2 - 1
    padded, (h, w) = pad_to_multiple(t, 4)
    with torch.no_grad():
        y = net.eval()(padded)[..., :h, :w]
    return ((y + 1) / 2).numpy()


def rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    result = ex.export(tiny_generator(0), path)
    return path, result


def test_onnx_export_is_verified_and_runs_at_any_size_and_batch(onnx_file):
    path, result = onnx_file
    assert result.verified and result.format == "onnx" and path.is_file()
    assert 0 <= result.max_diff <= 1e-4 and result.mean_diff <= result.max_diff
    assert "chelsea.png" in result.sample
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net = tiny_generator(0)
    for shape in SHAPES:
        x = rand(shape)
        y = session.run(None, {"image": x})[0]
        assert y.shape == shape
        np.testing.assert_allclose(y, reference(net, x), atol=1e-4)


def test_onnx_file_carries_the_contract(onnx_file):
    path, _ = onnx_file
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["input_name"] == model.graph.input[0].name == "image"
    assert meta["output_name"] == model.graph.output[0].name == "translated"
    assert (meta["layout"], meta["channel_order"], meta["input_range"], meta["output_range"]) == \
        ("NCHW", "RGB", "[0, 1]", "[0, 1]")
    assert meta["precision"] == "fp32" and meta["cyclebatch_version"] == __version__
    assert meta["architecture"].startswith("resnet_2blocks, ngf 8")
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    onnx.checker.check_model(model, full_check=True)
    assert ex.read_metadata(path) == meta


def test_fp16_onnx_halves_the_file_and_stays_close(onnx_file, tmp_path):
    fp32_path, _ = onnx_file
    path = tmp_path / "tiny16.onnx"
    result = ex.export(tiny_generator(0), path, fp16=True)
    assert result.verified and result.precision == "fp16"
    model = onnx.load(str(path))
    weights = [i for i in model.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    weight_bytes = [sum(onnx.numpy_helper.to_array(i).nbytes for i in m.graph.initializer)
                    for m in (model, onnx.load(str(fp32_path)))]
    assert weight_bytes[0] < 0.55 * weight_bytes[1]
    x = rand((1, 3, 45, 33))
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(y, reference(tiny_generator(0), x), atol=0.02)


def test_torchscript_export_runs_at_any_size_and_carries_the_contract(tmp_path):
    path = tmp_path / "tiny.pt"
    result = ex.export(tiny_generator(3), path)
    assert result.verified and result.format == "torchscript" and result.max_diff <= 1e-5
    module = torch.jit.load(str(path))
    for shape in SHAPES:
        x = rand(shape, seed=1)
        with torch.no_grad():
            y = module(torch.from_numpy(x)).numpy()
        assert y.shape == shape
        np.testing.assert_allclose(y, reference(tiny_generator(3), x), atol=1e-5)
    meta = ex.read_metadata(path)
    assert meta["input_name"] == "image" and meta["input_range"] == "[0, 1]"


def test_failed_verification_leaves_no_file(onnx_file, tmp_path, monkeypatch):
    # The "exporter" writes another network's graph: verification must catch it and keep nothing.
    other, _ = onnx_file
    monkeypatch.setattr(ex, "export_onnx", lambda net, path, **kw: shutil.copyfile(other, path))
    out = tmp_path / "out" / "wrong.onnx"
    with pytest.raises(CycleBatchError, match=r"wrong\.onnx: verification failed: max \|diff\|"):
        ex.export(tiny_generator(1), out)
    assert list(out.parent.iterdir()) == []


def test_verification_catches_a_shape_mismatch(tmp_path, monkeypatch):
    path = tmp_path / "tiny.pt"
    ex.export(tiny_generator(0), path, check=False)
    real = ex.run_file
    monkeypatch.setattr(ex, "run_file", lambda p, batches: [y[..., :-1] for y in real(p, batches)])
    with pytest.raises(CycleBatchError, match="verification failed, input"):
        ex.verify(path, tiny_generator(0))


def test_sample_images_are_real_odd_sized_and_have_a_fallback(monkeypatch):
    batches, desc = ex.sample_batches()
    assert "chelsea.png" in desc
    assert [b.shape for b in batches] == [(1, 3, 183, 250), (2, 3, 94, 126)]
    assert all(b.dtype == np.float32 and 0 <= b.min() and b.max() <= 1 and b.std() > 0.05 for b in batches)
    monkeypatch.setattr(ex, "SAMPLE_PHOTO", ex.SAMPLE_PHOTO.with_name("missing.png"))
    batches, desc = ex.sample_batches()
    assert "synthetic" in desc and [b.shape for b in batches] == [(1, 3, 183, 250), (2, 3, 94, 126)]


def test_bad_opset_and_suffix_are_refused(tmp_path):
    with pytest.raises(CycleBatchError, match="opset 11 is not supported"):
        ex.export(tiny_generator(0), tmp_path / "out" / "a.onnx", opset=11)
    with pytest.raises(CycleBatchError, match=r"a\.h5: the output must end in \.onnx .* \.tflite .* \.xml"):
        ex.export(tiny_generator(0), tmp_path / "out" / "a.h5")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_exports_verifies_and_refuses_to_overwrite():
    save_generator(tiny_generator(0), "tiny.safetensors")
    r = run_cli("export", "tiny.safetensors", "tiny.pt")
    assert r.returncode == 0, r.stderr
    assert "verified with TorchScript on chelsea.png" in r.stdout and "max |diff|" in r.stdout
    first = open("tiny.pt", "rb").read()
    r = run_cli("export", "tiny.safetensors", "tiny.pt")
    assert r.returncode == 1 and "tiny.pt: exists; pass --overwrite" in r.stderr
    assert open("tiny.pt", "rb").read() == first
    r = run_cli("export", "tiny.safetensors", "tiny.h5")
    assert r.returncode == 2 and "must end in .onnx" in r.stderr


@pytest.mark.parametrize("model, message", [
    ("nosuchmodel", "unknown model 'nosuchmodel'"),
    ("broken.pth", "broken.pth"),
])
def test_cli_model_that_cannot_be_loaded_fails_cleanly(model, message, tmp_path):
    open("broken.pth", "wb").write(b"not a checkpoint at all")
    r = run_cli("export", model, "out.onnx")
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and message in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.joinpath("work").iterdir()) == ["broken.pth"]
    assert not any(is_temp(p) for p in tmp_path.joinpath("work").iterdir())
