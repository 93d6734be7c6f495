"""Every generator the official CycleGAN code trains loads unchanged and translates as the official network does.

The reference networks below are written here, independently of cyclebatch.networks, in the style of the
official code (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py): plain nn.Sequential lists whose
parameterless layers (ReLU, padding, nn.Identity for `--norm none`, Dropout) hold index positions, in-place
activations, convs biased only with InstanceNorm. Their state_dicts are what `--netG/--norm` runs save.
"""

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import PHOTOS, run_cli
from cyclebatch.export import api as ex
from cyclebatch import load_file, load_generator, save_generator
from cyclebatch.engine import tiling
from cyclebatch.engine.translator import Translator
from cyclebatch.errors import CycleBatchError
from cyclebatch.io.images import read_image


# ---------------------------------------------------------------- the independent reference networks

def ref_norm(norm: str, ch: int) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(ch, affine=True, track_running_stats=True)
    return nn.Identity()


class RefResBlock(nn.Module):
    def __init__(self, ch, norm, dropout, bias):
        super().__init__()
        seq = [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=bias), ref_norm(norm, ch), nn.ReLU(True)]
        seq += [nn.Dropout(0.5)] if dropout else []
        seq += [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=bias), ref_norm(norm, ch)]
        self.conv_block = nn.Sequential(*seq)

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnet(nn.Module):
    def __init__(self, ngf, n_blocks, norm, dropout):
        super().__init__()
        bias = norm == "instance"
        seq = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=bias), ref_norm(norm, ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(2):
            seq += [nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1, bias=bias), ref_norm(norm, 2 * ch), nn.ReLU(True)]
            ch *= 2
        seq += [RefResBlock(ch, norm, dropout, bias) for _ in range(n_blocks)]
        for _ in range(2):
            seq += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                    ref_norm(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        seq += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class RefUnetLevel(nn.Module):
    def __init__(self, outer, inner, norm, inside=None, first=None, top=False, dropout=False):
        super().__init__()
        self.top = top
        bias = norm == "instance"
        down = nn.Conv2d(first or outer, inner, 4, stride=2, padding=1, bias=bias)
        if top:
            seq = [down, inside, nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif inside is None:
            seq = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                   nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=bias), ref_norm(norm, outer)]
        else:
            seq = [nn.LeakyReLU(0.2, True), down, ref_norm(norm, inner), inside, nn.ReLU(True),
                   nn.ConvTranspose2d(2 * inner, outer, 4, stride=2, padding=1, bias=bias), ref_norm(norm, outer)]
            seq += [nn.Dropout(0.5)] if dropout else []
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        # As the official block: `x` is read after the in-place LeakyReLU of model[0] has run on it.
        return self.model(x) if self.top else torch.cat([x, self.model(x)], 1)


class RefUnet(nn.Module):
    def __init__(self, ngf, downs, norm, dropout):
        super().__init__()
        level = RefUnetLevel(8 * ngf, 8 * ngf, norm)
        for _ in range(downs - 5):
            level = RefUnetLevel(8 * ngf, 8 * ngf, norm, level, dropout=dropout)
        level = RefUnetLevel(4 * ngf, 8 * ngf, norm, level)
        level = RefUnetLevel(2 * ngf, 4 * ngf, norm, level)
        level = RefUnetLevel(ngf, 2 * ngf, norm, level)
        self.model = RefUnetLevel(3, ngf, norm, level, first=3, top=True)

    def forward(self, x):
        return self.model(x)


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Random weights at a scale that keeps activations O(1); random BatchNorm running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight[:, 0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(1000)
    return net.eval()


# family id -> (reference builder, expected architecture, photo size (h, w))
FAMILIES = {
    "unet_256-batch-dropout": (lambda: RefUnet(8, 8, "batch", True), dict(name="unet_256", norm="batch"), (256, 256)),
    "unet_128-batch": (lambda: RefUnet(8, 7, "batch", False), dict(name="unet_128", norm="batch"), (150, 200)),
    "unet_256-instance": (lambda: RefUnet(8, 8, "instance", False), dict(name="unet_256", norm="instance"), (256, 256)),
    "unet_128-none": (lambda: RefUnet(8, 7, "none", True), dict(name="unet_128", norm="none"), (128, 128)),
    "resnet-batch": (lambda: RefResnet(8, 3, "batch", False), dict(name="resnet_3blocks", norm="batch"), (101, 75)),
    "resnet-batch-dropout": (lambda: RefResnet(8, 2, "batch", True),
                             dict(name="resnet_2blocks", norm="batch", dropout=True), (90, 119)),
    "resnet-none": (lambda: RefResnet(8, 3, "none", False), dict(name="resnet_3blocks", norm="none"), (75, 101)),
    "resnet-none-dropout": (lambda: RefResnet(8, 2, "none", True),
                            dict(name="resnet_2blocks", norm="none", dropout=True), (119, 90)),
}


# ---------------------------------------------------------------- helpers

def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    rgb = read_image(PHOTOS / name).rgb
    return np.ascontiguousarray(cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA))


def reference_pixels(ref: nn.Module, img: np.ndarray, multiple: int) -> np.ndarray:
    """The reference on an 8-bit photo under cyclebatch's contract: reflect-pad to `multiple`, crop back."""
    h, w = img.shape[:2]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double().div(127.5).sub(1).float()
    x = F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="reflect")
    with torch.no_grad():
        y = ref(x)[..., :h, :w]
    return y.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def saved(ref: nn.Module, path) -> str:
    return saved_dict(ref.state_dict(), path)


def saved_dict(sd: dict, path) -> str:
    torch.save(sd, path)
    return str(path)


def bn_train_mode(ref: nn.Module) -> nn.Module:
    """The official test.py without --eval at batch size 1: BatchNorm layers use the batch's statistics."""
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    return ref


def multiple_of(name: str) -> int:
    return int(name.split("_")[1]) if name.startswith("unet") else 4


# ---------------------------------------------------------------- loading and translating

@pytest.mark.parametrize("family", list(FAMILIES))
def test_official_family_loads_and_translates_as_the_official_network(tmp_path, family):
    build, arch, size = FAMILIES[family]
    ref = randomize(build(), seed=len(family))
    net = load_generator(saved(ref, tmp_path / "latest_net_G_A.pth"))
    c = net.config
    assert (c.name, c.norm, c.ngf, c.in_channels, c.out_channels) == (arch["name"], arch["norm"], 8, 3, 3)
    if c.family == "resnet":
        assert c.dropout == arch.get("dropout", False)
    assert net.size_multiple == multiple_of(arch["name"])

    img = photo("astronaut.png", size)
    want = reference_pixels(ref, img, net.size_multiple)
    assert want.std() > 5  # a real picture out of the reference, not a flat field that anything would match
    got = Translator(net, device="cpu", precision="fp32").translate(img)
    assert got.shape == img.shape
    quality = psnr(got, want)
    print(f"{family}: {quality:.1f} dB")
    assert quality >= 50

    # CPU default precision (bf16 weights; Winograd only on ResNet trunks) stays close too.
    assert psnr(Translator(net, device="cpu", precision="bf16").translate(img), want) >= 28

    # cyclebatch's own format keeps the architecture and every tensor (BatchNorm statistics included).
    again = load_file(save_generator(net, tmp_path / "g.safetensors"))
    assert again.config == net.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))


def test_running_statistics_are_kept_for_batchnorm_and_dropped_where_stale(tmp_path):
    x = torch.from_numpy(photo("rocket.jpg", (128, 128))).permute(2, 0, 1)[None].float() / 127.5 - 1
    # Old PyTorch saved running buffers for InstanceNorm too (the official loader deletes them).
    ref = randomize(RefUnet(8, 7, "instance", False), seed=2)
    sd = ref.state_dict()
    stale = [(name, m.num_features) for name, m in ref.named_modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(stale) == 5 * 2 + 1  # 7 levels: none in the outermost, down and up in 5, up only in the innermost
    for name, ch in stale:
        sd.update({f"{name}.running_mean": torch.randn(ch), f"{name}.running_var": torch.rand(ch) + 1,
                   f"{name}.num_batches_tracked": torch.tensor(7)})
    net = load_file(saved_dict(sd, tmp_path / "old.pth"))
    assert net.config.norm == "instance" and net.config.name == "unet_128"
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)
    # BatchNorm checkpoints from before PyTorch 0.4.1 have no num_batches_tracked: still loads, same output.
    ref = randomize(RefResnet(8, 2, "batch", False), seed=4)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    net = load_file(saved_dict(sd, tmp_path / "bn.pth"))
    assert net.config.norm == "batch"
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("build, size", [(lambda: RefUnet(8, 8, "batch", False), (256, 256)),
                                         (lambda: RefResnet(8, 3, "batch", False), (101, 75))])
def test_per_image_batchnorm_equals_train_mode_at_batch_size_1(tmp_path, build, size):
    ref = randomize(build(), seed=5)
    net = load_generator(saved(ref, tmp_path / "g.pth"))
    img = photo("chelsea.png", size)
    running = Translator(net, device="cpu", precision="fp32").translate(img)
    per_image = Translator(net, device="cpu", precision="fp32", batchnorm="per-image")
    got = per_image.translate(img)
    want = reference_pixels(bn_train_mode(ref), img, net.size_multiple)
    quality = psnr(got, want)
    print(f"per-image {net.config.name}: {quality:.1f} dB")
    assert quality >= 50
    assert psnr(running, want) < 40  # the two modes really differ: the option matters
    # Batched images keep their own statistics (official batch size 1), as they would one at a time.
    other = photo("coffee.png", size)
    both = per_image.translate_batch([img, other])
    assert np.array_equal(both[0], got) or psnr(both[0], got) > 60
    with pytest.raises(CycleBatchError, match="BatchNorm mode"):
        Translator(net, device="cpu", batchnorm="eval")


# ---------------------------------------------------------------- tiling

@pytest.mark.parametrize("norm, batchnorm", [("batch", "running"), ("none", "running"), ("batch", "per-image")])
def test_resnet_without_instancenorm_tiles_equal_the_full_frame(tmp_path, norm, batchnorm):
    ref = randomize(RefResnet(8, 3, norm, False), seed=7)
    net = load_generator(saved(ref, tmp_path / "g.pth"))
    img = photo("china.jpg", (120, 163))
    full = Translator(net, device="cpu", precision="fp32", batchnorm=batchnorm).translate(img)
    tr = Translator(net, device="cpu", precision="fp32", batchnorm=batchnorm, tile=64, context=8)
    tiled = tr.translate(img)
    assert tr.last_plan is not None and tr.last_plan.tile == 64  # it really went through tiles (2 x 3)
    diff = np.abs(tiled.astype(int) - full.astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3


def test_plain_tiles_need_the_context_the_tiler_gives_them(tmp_path):
    """The tiler widens the context of statistics-free models to their receptive field; without it, seams."""
    ref = randomize(RefResnet(8, 3, "batch", False), seed=7)
    net = load_generator(saved(ref, tmp_path / "g.pth"))
    img = photo("china.jpg", (120, 163))
    full = Translator(net, device="cpu", precision="fp32").translate(img)
    tr = Translator(net, device="cpu", precision="fp32", tile=64, context=8)
    plan = tr.tile_plan(*img.shape[:2])
    assert plan.context > 8
    narrow = tiling.Tiler(tr, replace(plan, context=0)).translate(img)
    diff = np.abs(narrow.astype(int) - full.astype(int))
    print(f"context 0: max {diff.max()}, mean {diff.mean():.3f}")
    assert diff.max() > 2  # seams: more than the exact path's rounding (<= 1) in the test above


def test_unet_runs_full_frame_only_with_a_clear_error(tmp_path):
    net = load_generator(saved(randomize(RefUnet(8, 7, "none", False), 1), tmp_path / "u.pth"))
    with pytest.raises(CycleBatchError, match=r"unet_128.*cannot be tiled.*--max-size.*--scale"):
        Translator(net, device="cpu", tile=64)
    small_budget = Translator(net, device="cpu", precision="fp32", max_memory=1 << 20)
    with pytest.raises(CycleBatchError, match=r"1024x768 image.*--max-size.*--scale"):
        small_budget.translate(photo("rocket.jpg", (768, 1024)))


# ---------------------------------------------------------------- CLI and export

def test_cli_info_and_run_on_a_batchnorm_unet(tmp_path):
    ref = randomize(RefUnet(8, 8, "batch", True), seed=11)
    model = saved(ref, tmp_path / "latest_net_G_A.pth")
    r = run_cli("models", "info", model)
    assert r.returncode == 0, r.stderr
    assert "unet_256" in r.stdout and "8 downsamplings" in r.stdout and "BatchNorm" in r.stdout
    n = sum(p.numel() for p in ref.parameters())
    assert f"{n:,}" in r.stdout

    src = tmp_path / "in"
    src.mkdir()
    img = photo("astronaut.png", (256, 256))
    cv2.imwrite(str(src / "a.png"), img[:, :, ::-1])
    r = run_cli("run", src, "-m", model, "--batchnorm", "per-image", "-o", tmp_path / "out", "--device", "cpu",
                "--precision", "fp32", "-q")
    assert r.returncode == 0, r.stderr
    out = cv2.imread(str(tmp_path / "out" / "a.png"))[:, :, ::-1]
    assert psnr(out, reference_pixels(bn_train_mode(ref), img, 256)) >= 50


@pytest.mark.parametrize("fmt", ["onnx", "pt"])
def test_export_runs_a_unet_at_any_size_it_declares(tmp_path, fmt):
    ref = randomize(RefUnet(4, 7, "batch", False), seed=13)
    net = load_generator(saved(ref, tmp_path / "u.pth"))
    result = ex.export(net, tmp_path / f"u.{fmt}")
    assert result.verified and result.max_diff <= 1e-3
    meta = ex.read_metadata(tmp_path / f"u.{fmt}")
    assert "multiple of 128" in meta["padding"] and "unet_128" in meta["architecture"]
    # An odd size above the declared minimum, against the independent reference.
    img = photo("coffee.png", (131, 190))
    x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255).numpy()
    y = ex.run_file(tmp_path / f"u.{fmt}", [x])[0]
    got = np.clip(np.round(y[0].transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
    assert psnr(got, reference_pixels(ref, img, 128)) >= 50
