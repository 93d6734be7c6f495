import pytest
import torch
from torch import nn

from cyclebatch.models.networks import (
    GeneratorConfig, InstanceNorm, PatchDiscriminator, ResnetGenerator, init_weights, instance_stats, pad_to_multiple,
)

# The official resnet_9blocks generator (ngf 64, InstanceNorm without affine, no dropout), written out by hand
# from junyanz/pytorch-CycleGAN-and-pix2pix's networks.py.
OFFICIAL_G_HEAD = [
    ("model.1.weight", (64, 3, 7, 7)), ("model.1.bias", (64,)),
    ("model.4.weight", (128, 64, 3, 3)), ("model.4.bias", (128,)),
    ("model.7.weight", (256, 128, 3, 3)), ("model.7.bias", (256,)),
]
OFFICIAL_G_BLOCK = [("conv_block.1.weight", (256, 256, 3, 3)), ("conv_block.1.bias", (256,)),
                    ("conv_block.5.weight", (256, 256, 3, 3)), ("conv_block.5.bias", (256,))]
OFFICIAL_G_TAIL = [
    ("model.19.weight", (256, 128, 3, 3)), ("model.19.bias", (128,)),
    ("model.22.weight", (128, 64, 3, 3)), ("model.22.bias", (64,)),
    ("model.26.weight", (3, 64, 7, 7)), ("model.26.bias", (3,)),
]
OFFICIAL_D = [
    ("model.0.weight", (64, 3, 4, 4)), ("model.0.bias", (64,)),
    ("model.2.weight", (128, 64, 4, 4)), ("model.2.bias", (128,)),
    ("model.5.weight", (256, 128, 4, 4)), ("model.5.bias", (256,)),
    ("model.8.weight", (512, 256, 4, 4)), ("model.8.bias", (512,)),
    ("model.11.weight", (1, 512, 4, 4)), ("model.11.bias", (1,)),
]


def shapes(net):
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


def test_resnet_9blocks_keys_and_shapes_are_official():
    blocks = [(f"model.{i}.{k}", s) for i in range(10, 19) for k, s in OFFICIAL_G_BLOCK]
    assert shapes(ResnetGenerator()) == OFFICIAL_G_HEAD + blocks + OFFICIAL_G_TAIL
    assert len(ResnetGenerator().state_dict()) == 48
    assert sum(p.numel() for p in ResnetGenerator().parameters()) == 11_378_179


def test_resnet_6blocks_shifts_the_tail_indices():
    net = ResnetGenerator(GeneratorConfig(n_blocks=6))
    keys = [k for k, _ in shapes(net)]
    assert "model.15.conv_block.5.weight" in keys and "model.16.weight" in keys and "model.23.weight" in keys
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 3) == 7.838


def test_dropout_moves_second_conv_and_affine_adds_norm_weights():
    keys = ResnetGenerator(GeneratorConfig(dropout=True, n_blocks=1)).state_dict().keys()
    assert "model.10.conv_block.6.weight" in keys and "model.10.conv_block.5.weight" not in keys
    affine = ResnetGenerator(GeneratorConfig(affine_norm=True)).state_dict()
    assert len(affine) == 48 + 46 and affine["model.2.weight"].shape == (64,)


def test_patch_discriminator_keys_and_shapes_are_official():
    d = PatchDiscriminator()
    assert shapes(d) == OFFICIAL_D
    assert round(sum(p.numel() for p in d.parameters()) / 1e6, 3) == 2.765
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # 70x70 patches on a 256 image


def test_init_is_normal_0_002():
    net = init_weights(ResnetGenerator())
    w = net.model[11].conv_block[1].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    assert net.model[1].bias.abs().max() == 0


def test_generator_output_shape_and_range():
    net = ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=1)).eval()
    y = net(torch.randn(2, 3, 36, 44))
    assert y.shape == (2, 3, 36, 44) and y.abs().max() <= 1


def test_pad_to_multiple_reflects_and_keeps_size():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    y, (h, w) = pad_to_multiple(x, 4)
    assert y.shape[-2:] == (8, 8) and (h, w) == (5, 7)
    assert torch.equal(y[..., :5, :7], x)
    assert torch.equal(y[..., 5, :7], x[..., 3, :])  # reflection, not zeros


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("hook", [None, "own", "fixed"])
def test_instance_norm_on_channels_last_equals_the_nchw_one(affine, hook):
    # The CPU engine runs channels_last, where norms (hooked or not) take a batch_norm path of their own.
    torch.manual_seed(0)
    norm = InstanceNorm(6, affine)
    if affine:
        nn.init.normal_(norm.weight, 1.0, 0.5)
        nn.init.normal_(norm.bias, 0.0, 0.5)
    fixed = (torch.randn(1, 6, 1, 1), torch.rand(1, 6, 1, 1) + 0.5)
    norm.stats_hook = {None: None, "own": lambda n, x: instance_stats(x), "fixed": lambda n, x: fixed}[hook]
    x = torch.randn(3, 6, 9, 11) * 3 + torch.randn(1, 6, 1, 1) * 4
    y = norm(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, norm(x), rtol=1e-5, atol=1e-5)
    if hook == "fixed":  # the hook's statistics are the ones used, not the frame's own
        mean, var = fixed
        want = (x - mean) / torch.sqrt(var + norm.eps)
        if affine:
            want = want * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(9, 11), (1, 5), (1, 1)])
def test_instance_stats_are_fp32_per_image_statistics_in_either_layout(dtype, size):
    torch.manual_seed(0)
    x = (torch.randn(3, 6, *size) * 3 + torch.randn(1, 6, 1, 1) * 10).to(dtype)
    ref = x.double()
    want_mean, want_var = ref.mean((2, 3), keepdim=True), ref.var((2, 3), unbiased=False, keepdim=True)
    for layout in (torch.contiguous_format, torch.channels_last):
        mean, var = instance_stats(x.contiguous(memory_format=layout))
        assert mean.dtype == var.dtype == torch.float32 and mean.shape == var.shape == (3, 6, 1, 1)
        torch.testing.assert_close(mean.double(), want_mean, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(var.double(), want_var, rtol=1e-5, atol=1e-5)


def test_fp32_channels_last_norms_are_as_accurate_as_the_nchw_kernel_on_large_images():
    # batch_norm's statistics are plain fp32 sums: over a 512x512 image's 262k rows they were off by 2e-5
    # (outputs 150x the NCHW kernel's error). Summed in parts and merged in float64 they must not be.
    torch.manual_seed(0)
    x = torch.randn(2, 4, 512, 512) * 0.5 + torch.tensor([0.0, 1.0, 3.0, -2.0]).view(1, 4, 1, 1)
    ref = x.double()
    want_var = ref.var((2, 3), unbiased=False, keepdim=True)
    want = (ref - ref.mean((2, 3), keepdim=True)) / torch.sqrt(want_var + 1e-5)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        nchw_err = (InstanceNorm(4)(x).double() - want).abs().max()
        cl_err = (InstanceNorm(4)(xc).double() - want).abs().max()
        mean, var = instance_stats(xc)
    assert cl_err <= max(4 * nchw_err, 2e-6), (cl_err, nchw_err)
    assert ((var.double() - want_var) / want_var).abs().max() < 1e-6
    assert (mean.double() - ref.mean((2, 3), keepdim=True)).abs().max() < 1e-6


def test_training_keeps_gradients_through_norm_statistics_on_channels_last():
    # The fast CPU paths compute statistics without autograd: training must not take them.
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 8, 8) * 2 + 1).contiguous(memory_format=torch.channels_last).requires_grad_()
    norm = InstanceNorm(3)
    (norm(x) * torch.arange(64.0).view(1, 1, 8, 8)).sum().backward()
    x2 = x.detach().contiguous().requires_grad_()
    (torch.nn.functional.instance_norm(x2) * torch.arange(64.0).view(1, 1, 8, 8)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
