"""Winograd trunk convolutions: exact in float64, as accurate as the direct path in the engine's precisions."""

import copy

import pytest
import torch
from torch import nn

import cyclebatch.engine.cpu.winograd as wino
from cyclebatch.engine.translator import Translator
from cyclebatch.models.networks import GeneratorConfig, ResnetGenerator, init_weights
from cyclebatch.engine.cpu.winograd import WinogradConv3x3


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("size", [(12, 16), (13, 10), (1, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_the_direct_convolution_in_float64(m, size, channels_last, monkeypatch):
    monkeypatch.setattr(wino, "BAND_BYTES", 1)  # one tile row per band: the band seams are covered too
    monkeypatch.setattr(wino, "FP32_BAND_BYTES", 1)
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3).double()
    x = torch.randn(2, 5, size[0] + 2, size[1] + 2, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = WinogradConv3x3(conv, m)(x)
    assert y.shape == (2, 7, *size) and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, conv(x), rtol=0, atol=1e-12)


def test_refuses_what_it_cannot_replace():
    for conv in (nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2), nn.Conv2d(4, 4, 5)):
        with pytest.raises(ValueError):
            WinogradConv3x3(conv, 2)


def _tiny(seed=0):
    torch.manual_seed(seed)
    net = ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=3, affine_norm=True))
    init_weights(net, 0.3)  # wide weights: activations far from zero, so rounding shows
    return net.eval()


def test_cpu_translator_runs_the_trunk_through_winograd_in_fp32_and_bf16():
    net = _tiny()
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.inference_mode():
        ref = net(x)
        fp32 = Translator(net, device="cpu", precision="fp32")
        assert fp32.winograd == 4
        assert sum(isinstance(m, WinogradConv3x3) for m in fp32.model.modules()) == 6
        torch.testing.assert_close(fp32.forward(x), ref, rtol=0, atol=1e-4)

        bf16 = Translator(net, device="cpu", precision="bf16")
        assert bf16.winograd == 2
        direct = copy.deepcopy(net).to(torch.bfloat16)(x.bfloat16()).float()
        err_direct = (direct - ref).abs()
        err_wino = (bf16.forward(x) - ref).abs()
        # Winograd rounds in other places than the direct convolution, not more often.
        assert err_wino.mean() < 1.3 * err_direct.mean()
        assert err_wino.max() < 2.0 * err_direct.max()
    assert not any(isinstance(m, WinogradConv3x3) for m in net.modules()), "the caller's model was changed"



def _native_or_skip():
    from cyclebatch.engine.cpu import native

    if native._compiler() is None:
        pytest.skip("no C compiler on this machine: the torch transforms are the only path")
    lib = native.kernels()
    assert lib is not None, "a C compiler is here but the native Winograd kernels did not build"
    return lib


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 16, 32, 13, 10), (1, 32, 16, 8, 9)])
def test_native_transforms_equal_the_torch_ones(m, dtype, shape, monkeypatch):
    _native_or_skip()
    monkeypatch.setattr(wino, "BAND_BYTES", 1)  # one tile row per band: band offsets are covered
    monkeypatch.setattr(wino, "FP32_BAND_BYTES", 1)
    n, c, k, h, w = shape
    torch.manual_seed(m)
    conv = nn.Conv2d(c, k, 3).to(dtype)
    x = torch.randn(n, c, h + 2, w + 2).to(dtype)
    layer = WinogradConv3x3(conv, m)
    assert layer._native(c, k) is not None
    with torch.inference_mode():
        native = layer(x)
        monkeypatch.setattr(layer, "_native", lambda c, k: None)
        plain = layer(x)
    assert native.shape == plain.shape == (n, k, h, w)
    assert native.is_contiguous(memory_format=torch.channels_last)
    # The same sums in another order (and the bias added after the output transform rather than before):
    # fp32 agrees to rounding, bf16 to one rounding of the output.
    scale = plain.float().abs().max()
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert (native.float() - plain.float()).abs().max() <= tol * scale
    assert not torch.equal(native, torch.zeros_like(native))


def test_native_kernels_are_built_once_and_cached_per_source_and_cpu(tmp_path, monkeypatch):
    from cyclebatch.engine.cpu import native

    _native_or_skip()
    cc = native._compiler()
    first = native._build(cc)
    assert first.parent == tmp_path / "cbhome" / "native" and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert native._build(cc) == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    monkeypatch.setattr(native, "_cpu_flags", lambda: "flags\t: sse2")  # another kind of CPU: its own build
    other = native._build(cc)
    assert other != first and other.exists()
    other.unlink()  # the build directory is shared by the test session (conftest)
    assert not list(first.parent.glob("tmp*")), "no half-written library is left beside the cached ones"


def test_without_a_compiler_the_torch_transforms_run(monkeypatch):
    from cyclebatch.engine.cpu import native

    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    native.kernels.cache_clear()
    try:
        assert native.kernels() is None
        net = _tiny()
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        with torch.inference_mode():
            torch.testing.assert_close(Translator(net, device="cpu", precision="fp32").forward(x), net(x),
                                       rtol=0, atol=1e-4)
    finally:
        native.kernels.cache_clear()


def test_a_failing_build_falls_back_with_a_debug_line(tmp_path, monkeypatch, caplog):
    from cyclebatch.engine.cpu import native

    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: no input' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    native.kernels.cache_clear()
    try:
        with caplog.at_level("DEBUG", logger="cyclebatch"):
            assert native.kernels() is None
        assert any("native kernels unavailable" in r.message and "fatal error" in r.message for r in caplog.records)
        assert not list((tmp_path / "cbhome" / "native").glob("tmp*")), "a failed build leaves nothing behind"
    finally:
        native.kernels.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 16, 1, 11, 9), (1, 32, 3, 12, 13)])
def test_native_narrow_convolution_equals_the_plain_one(dtype, shape, monkeypatch):
    from cyclebatch.engine.cpu import narrow_conv
    from cyclebatch.engine.cpu.narrow_conv import NarrowConv

    _native_or_skip()
    n, c, o, h, w = shape
    torch.manual_seed(o)
    conv = nn.Conv2d(c, o, 7).to(dtype)
    x = torch.randn(n, c, h, w).to(dtype)
    layer = NarrowConv(conv)
    # bf16 on an AMX CPU goes to oneDNN (faster there); the C loop is checked all the same
    assert (layer._native(x) is None) == (dtype == torch.bfloat16 and narrow_conv.amx_bf16())
    monkeypatch.setattr(narrow_conv, "amx_bf16", lambda: False)
    assert layer._native(x) is not None
    with torch.inference_mode():
        native, plain = layer(x), conv(x)
    assert native.shape == plain.shape == (n, o, h - 6, w - 6)
    scale = plain.float().abs().max()
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7  # fp32 sums in another order; bf16: one rounding
    assert (native.float() - plain.float()).abs().max() <= tol * scale


def test_cpu_translator_runs_the_last_convolution_natively_and_keeps_the_structure():
    from cyclebatch.engine.cpu.narrow_conv import NarrowConv

    _native_or_skip()
    torch.manual_seed(1)
    net = init_weights(ResnetGenerator(GeneratorConfig(ngf=16, n_blocks=2)), 0.3).eval()  # 16 channels in
    x = torch.rand(1, 3, 40, 36) * 2 - 1
    t = Translator(net, device="cpu", precision="fp32")
    layers = list(t.model.model)
    assert isinstance(layers[-2], NarrowConv) and len(layers) == len(net.model)
    assert layers[-2]._native(torch.zeros(1, 16, 8, 8)) is not None
    assert not any(isinstance(m, NarrowConv) for m in net.modules()), "the caller's model was changed"
    with torch.inference_mode():
        torch.testing.assert_close(t.forward(x), net(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("m,dtype", [(4, torch.float32), (2, torch.bfloat16)])
@pytest.mark.parametrize("affine,dropout", [(False, False), (True, True)])
@pytest.mark.parametrize("band", [1, wino.BAND_BYTES])
def test_fused_residual_block_equals_its_layers(m, dtype, affine, dropout, band, monkeypatch):
    from cyclebatch.models.networks import ResnetBlock
    from cyclebatch.engine.cpu.winograd import WinogradResnetBlock, use_winograd

    _native_or_skip()
    monkeypatch.setattr(wino, "BAND_BYTES", band)  # 1: a band per tile row, so the seams are covered
    monkeypatch.setattr(wino, "FP32_BAND_BYTES", band)
    torch.manual_seed(3)
    net = init_weights(ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1, affine_norm=affine, dropout=dropout)), 0.3)
    net = net.eval().to(dtype)
    use_winograd(net, m)
    block = next(b for b in net.model if isinstance(b, ResnetBlock))
    assert isinstance(block, WinogradResnetBlock)
    x = torch.randn(2, 16, 11, 14).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert block._fusable(x) is not None
        fused = block(x)
        layered = ResnetBlock.forward(block, x)
    assert fused.shape == layered.shape and fused.is_contiguous(memory_format=torch.channels_last)
    scale = layered.float().abs().max()
    # fp32: the same sums in another order; bf16: fewer roundings than the layers (one per stage, not two).
    tol = 1e-5 if dtype == torch.float32 else 2 ** -5
    assert (fused.float() - layered.float()).abs().max() <= tol * scale
    with torch.inference_mode():  # a non-finite input stays visible (the engine re-runs or fails on it)
        x[0, 0, 3, 3] = float("nan")
        assert torch.isnan(block(x)[0]).any() and not torch.isnan(block(x)[1]).any()


def test_fused_block_steps_aside_for_outside_statistics_and_training():
    from cyclebatch.models.networks import InstanceNorm, ResnetBlock
    from cyclebatch.engine.cpu.winograd import use_winograd

    _native_or_skip()
    net = use_winograd(init_weights(ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1))).eval(), 4)
    block = next(b for b in net.model if isinstance(b, ResnetBlock))
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert block._fusable(x) is not None
        norm = next(m for m in block.conv_block if isinstance(m, InstanceNorm))
        norm.stats_hook = lambda layer, t: (t.float().mean((2, 3), keepdim=True), t.float().var((2, 3), keepdim=True))
        assert block._fusable(x) is None  # tiles and shared video statistics need the layers
        norm.stats_hook = None
    assert block._fusable(x) is None  # outside inference (gradients on): the layers
