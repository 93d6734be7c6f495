"""InstanceNorm + ReLU as one native pass pair (engine/cpu/norm_relu.py): the same values as the two layers."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import torch_threads
from cyclebatch.engine.cpu.norm_relu import NormReLU, use_norm_relu
from cyclebatch.engine.translator import Translator
from cyclebatch.models.networks import GeneratorConfig, InstanceNorm, ResnetGenerator, init_weights


def _native_or_skip():
    from cyclebatch.engine.cpu import native

    if native._compiler() is None:
        pytest.skip("no C compiler on this machine: the layers are the only path")
    assert native.kernels() is not None, "a C compiler is here but the native kernels did not build"


def _norm(c, affine, seed=0):
    torch.manual_seed(seed)
    norm = InstanceNorm(c, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1, 0.5)
            norm.bias.normal_(0, 0.5)
    return norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 16, 23, 17), (1, 32, 40, 70)])  # 391 and 2800 pixels: partial sum runs
@pytest.mark.parametrize("affine", [False, True])
def test_equals_instance_norm_then_relu(dtype, shape, affine):
    _native_or_skip()
    norm = _norm(shape[1], affine)
    fused = copy.deepcopy(norm)
    fused.__class__ = NormReLU
    x = (torch.randn(shape) * 3 + 2).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert fused._native(x) is not None
        got = fused(x)
        want = torch.relu(InstanceNorm.forward(norm, x.float()))  # the layers, in fp32
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7  # bf16: one rounding of the output
    assert (got.float() - want).abs().max() <= tol * want.abs().max()
    assert (got >= 0).all()


def test_uses_the_statistics_hook_and_keeps_nans_visible():
    _native_or_skip()
    norm = _norm(16, True)
    norm.__class__ = NormReLU
    x = torch.randn(1, 16, 9, 8).contiguous(memory_format=torch.channels_last)
    mean, var = torch.full((1, 16, 1, 1), 0.5), torch.full((1, 16, 1, 1), 4.0)
    norm.stats_hook = lambda layer, t: (mean, var)  # statistics from outside (tiles, shared video ones)
    with torch.inference_mode():
        got = norm(x)
    w, b = norm.weight.view(1, -1, 1, 1), norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(got, torch.relu((x - 0.5) / (4 + norm.eps) ** 0.5 * w + b), rtol=0, atol=1e-5)
    norm.stats_hook = None
    x[0, 3, 2, 2] = float("nan")
    with torch.inference_mode():
        assert torch.isnan(norm(x)[0, 3]).all()  # a non-finite input stays visible: the engine re-runs on it


def test_steps_aside_where_it_does_not_apply():
    _native_or_skip()
    norm = _norm(16, True)
    norm.__class__ = NormReLU
    x = torch.randn(1, 16, 6, 6)
    assert norm._native(x) is None  # NCHW memory
    cl = x.contiguous(memory_format=torch.channels_last)
    assert norm._native(cl) is None  # gradients on (training)
    with torch.inference_mode():
        assert norm._native(cl) is not None
        assert norm._native(torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)) is None
    y = norm(x.requires_grad_(True))  # the layers' path, with gradients
    y.sum().backward()
    assert x.grad is not None and (y >= 0).all()


def test_cpu_translator_fuses_the_pairs_outside_the_blocks_and_keeps_the_structure():
    _native_or_skip()
    torch.manual_seed(2)
    net = init_weights(ResnetGenerator(GeneratorConfig(ngf=16, n_blocks=2, affine_norm=True)), 0.3).eval()
    t = Translator(net, device="cpu", precision="fp32")
    layers = list(t.model.model)
    assert len(layers) == len(net.model)
    fused = [i for i, m in enumerate(layers) if isinstance(m, NormReLU)]
    assert len(fused) == 5  # three in the head, two in the tail
    assert all(isinstance(layers[i + 1], nn.Identity) for i in fused)
    assert not any(isinstance(m, NormReLU) for m in net.modules()), "the caller's model was changed"
    x = np.random.default_rng(0).integers(0, 255, (48, 56, 3), dtype=np.uint8)
    plain = Translator(net, device="cpu", precision="fp32")
    plain.model = copy.deepcopy(net)  # the unfused layers
    assert np.abs(t.translate(x).astype(int) - plain.translate(x).astype(int)).max() <= 1


def test_other_generators_are_left_alone():
    from cyclebatch.models.networks import UnetGenerator

    net = UnetGenerator(GeneratorConfig(family="unet", n_downs=5, ngf=16))
    before = [type(m) for m in net.modules()]
    assert [type(m) for m in use_norm_relu(net).modules()] == before


def test_the_same_bits_with_any_number_of_threads():
    _native_or_skip()
    norm = _norm(16, True)
    norm.__class__ = NormReLU
    x = (torch.randn(1, 16, 64, 90) * 5 + 3).contiguous(memory_format=torch.channels_last)
    outs = []
    for threads in (1, 2, 3):  # video and `run` must agree bit for bit, whatever the thread governor picks
        with torch_threads(threads), torch.inference_mode():
            outs.append(norm(x))
    assert all(torch.equal(outs[0], o) for o in outs[1:])
