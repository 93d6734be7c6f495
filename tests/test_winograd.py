"""Winograd trunk convolutions: exact in float64, as accurate as the direct path in the engine's precisions."""

import copy

import pytest
import torch
from torch import nn

import cyclebatch.winograd as wino
from cyclebatch.engine import Translator
from cyclebatch.networks import GeneratorConfig, ResnetGenerator, init_weights
from cyclebatch.winograd import WinogradConv3x3


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("size", [(12, 16), (13, 10), (1, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_the_direct_convolution_in_float64(m, size, channels_last, monkeypatch):
    monkeypatch.setattr(wino, "BAND_BYTES", 1)  # one tile row per band: the band seams are covered too
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

