import collections
import os

import pytest
import torch

from conftest import PHOTOS, run_cli, tiny_generator
from cyclebatch import CycleBatchError, load_file, load_generator, save_generator
from cyclebatch.models.networks import PatchDiscriminator

X = torch.randn(1, 3, 32, 40, generator=torch.Generator().manual_seed(1))


def same_output(a, b):
    with torch.no_grad():
        return torch.equal(a(X), b(X))


def save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("kw", [{}, {"n_blocks": 6}, {"n_blocks": 9}, {"dropout": True}, {"affine_norm": True},
                                {"ngf": 4, "in_channels": 1, "out_channels": 3}])
def test_official_state_dict_loads_with_inferred_architecture(tmp_path, kw):
    net = tiny_generator(**kw)
    loaded = load_file(save(net.state_dict(), tmp_path / "latest_net_G_A.pth"))
    assert loaded.config == net.config
    if net.config.in_channels == 3:
        assert same_output(net, loaded)


def test_stale_instancenorm_buffers_and_dataparallel_prefix_are_accepted(tmp_path):
    net = tiny_generator()
    sd = collections.OrderedDict()
    for k, v in net.state_dict().items():
        sd["module." + k] = v
    for idx in (2, 5, 8):  # what pre-0.4 PyTorch InstanceNorm saved
        sd[f"module.model.{idx}.running_mean"] = torch.zeros(1)
        sd[f"module.model.{idx}.running_var"] = torch.ones(1)
        sd[f"module.model.{idx}.num_batches_tracked"] = torch.tensor(0)
    loaded = load_file(save(sd, tmp_path / "old.pth"))
    assert same_output(net, loaded)


def test_vintagify_layout_loads_through_its_adapter(tmp_path):
    net = tiny_generator(affine_norm=True)
    foreign = {k.replace(".conv_block.", ".block."): v for k, v in net.state_dict().items()}
    loaded = load_file(save(foreign, tmp_path / "G_A2B_epoch33.pth"))
    assert loaded.config.affine_norm and same_output(net, loaded)


def test_own_format_round_trip_keeps_weights_and_metadata(tmp_path):
    net = tiny_generator(affine_norm=True)
    path = save_generator(net, tmp_path / "g.safetensors", {"direction": "AtoB", "domains": {"A": "cats", "B": "dogs"}})
    loaded = load_file(path)
    assert same_output(net, loaded)
    assert loaded.metadata["domains"] == {"A": "cats", "B": "dogs"}
    assert loaded.metadata["architecture"]["affine_norm"] is True
    assert not list(tmp_path.glob(".cyclebatch-tmp-*"))
    with pytest.raises(CycleBatchError, match="translates AtoB, not BtoA"):
        load_file(path, "BtoA")


def test_file_with_both_generators_picks_by_direction(tmp_path):
    a, b = tiny_generator(seed=1), tiny_generator(seed=2)
    path = save({"G_A": a.state_dict(), "G_B": b.state_dict(), "epoch": 3}, tmp_path / "latest.pt")
    assert same_output(a, load_file(path, "AtoB"))
    assert same_output(b, load_file(path, "BtoA"))


def test_single_generator_refuses_btoa(tmp_path):
    path = save(tiny_generator().state_dict(), tmp_path / "g.pth")
    with pytest.raises(CycleBatchError, match="single generator"):
        load_generator(path, "BtoA")


def test_folder_with_official_pair_resolves_each_direction(tmp_path):
    a, b = tiny_generator(seed=1), tiny_generator(seed=2)
    save(a.state_dict(), tmp_path / "latest_net_G_A.pth")
    save(b.state_dict(), tmp_path / "latest_net_G_B.pth")
    assert same_output(a, load_generator(tmp_path, "AtoB"))
    assert same_output(b, load_generator(tmp_path, "BtoA"))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    sd = dict(tiny_generator().state_dict())
    sd["evil"] = Payload(marker)
    path = save(sd, tmp_path / "evil.pth")
    with pytest.raises(CycleBatchError, match=r"refused.*carries Python code.*system"):
        load_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage,reason", [
    ("empty", "empty file"),
    ("truncated", "truncated or corrupt"),
    ("garbage", "not a PyTorch checkpoint|truncated or corrupt|unreadable"),
    ("jpeg", "not a PyTorch checkpoint|truncated or corrupt|unreadable"),
    ("discriminator", "not a CycleGAN generator .ResNet or U-Net."),
    ("missing_key", "keys do not fit"),
    ("safetensors_truncated", "corrupt or truncated safetensors"),
    ("folder", "is a folder"),
])
def test_bad_files_fail_with_one_line_naming_the_file(tmp_path, damage, reason):
    net = tiny_generator()
    path = tmp_path / f"{damage}.pth"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        save(net.state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(5000))
    elif damage == "jpeg":
        path.write_bytes((PHOTOS / "rocket.jpg").read_bytes())
    elif damage == "discriminator":
        save(PatchDiscriminator(ndf=8).state_dict(), path)
    elif damage == "missing_key":
        sd = net.state_dict()
        del sd["model.4.bias"]
        save(sd, path)
    elif damage == "safetensors_truncated":
        path = save_generator(net, tmp_path / "t.safetensors")
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "folder":
        path.mkdir()
    with pytest.raises(CycleBatchError, match=reason) as e:
        load_file(path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message


def test_cli_convert_then_info(tmp_path):
    net = tiny_generator(dropout=True)
    src = save(net.state_dict(), tmp_path / "latest_net_G_A.pth")
    dst = tmp_path / "out.safetensors"
    r = run_cli("models", "convert", src, dst)
    assert r.returncode == 0, r.stderr
    assert same_output(net, load_file(dst))
    assert load_file(dst).metadata["converted_from"] == str(src)
    r = run_cli("models", "info", dst)
    assert r.returncode == 0 and "resnet_2blocks" in r.stdout and "dropout" in r.stdout
    r = run_cli("models", "convert", src, dst)
    assert r.returncode == 1 and "exists" in r.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\0" * 10)
    r = run_cli("models", "info", bad)
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(bad) in r.stderr
