"""`cyclebatch train`: losses, exact resume, signals, exports, DDP, bad data. Tiny networks, 32 px crops."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTOS, ROOT, run_cli, tiny_generator
from cyclebatch import CycleBatchError, load_generator, save_generator
from cyclebatch.train import TrainConfig, load_checkpoint, train
from cyclebatch.train.pool import ImagePool
from cyclebatch.train.distributed import rank_device
from cyclebatch.train.step import autocast_dtype
from cyclebatch.train.trainer import Trainer

TINY = dict(ngf=8, n_blocks=2, ndf=8, load_size=40, crop_size=32, workers=0, progress=False)
TINY_CLI = ["--ngf", "8", "--n-blocks", "2", "--ndf", "8", "--load-size", "40", "--crop-size", "32", "-q"]


def make_domains(root: Path, n_a: int = 3, n_b: int = 3) -> tuple[Path, Path]:
    """horses/ and zebras/ of small real photos (B in a subfolder: discovery is recursive)."""
    photos = sorted(PHOTOS.glob("*.[jp][pn]g"))
    a, b = root / "horses", root / "zebras" / "set1"
    for folder, start, n in ((a, 0, n_a), (b, 3, n_b)):
        folder.mkdir(parents=True)
        for k in range(n):
            im = Image.open(photos[(start + k) % len(photos)]).convert("RGB").resize((64, 48))
            im.save(folder / f"img{k}.png")
    return a, b.parent


def config(a, b, name="run", **kw) -> TrainConfig:
    return TrainConfig(str(a), str(b), name, **{**TINY, **kw})


def quiet(*_):
    pass


@pytest.mark.slow
def test_losses_finite_outputs_written_and_schedule_decays(tmp_path):
    a, b = make_domains(tmp_path)
    r = train(config(a, b, epochs=1, decay_epochs=2, log_every=1), log=quiet)
    assert r.finished and r.epoch == 3 and r.iteration == 9
    assert set(r.losses) == {"D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B"}
    assert all(math.isfinite(v) and v > 0 for v in r.losses.values())
    run = Path("runs/run")
    rows = list(csv.DictReader(open(run / "losses.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 10))
    # linear decay: 1 epoch at 2e-4, then 2e-4 * (1 - k / 3) for the 2 decay epochs
    lrs = {int(r["epoch"]): float(r["lr"]) for r in rows}
    assert lrs == pytest.approx({1: 2e-4, 2: 2e-4 * 2 / 3, 3: 2e-4 / 3}, rel=1e-5)
    for name in ("losses.png", "samples/epoch_001.png", "samples/epoch_003.png", "checkpoints/latest.pt",
                 "checkpoints/epoch_003.pt", "G_A.safetensors", "G_B.safetensors", "config.json", "report.html",
                 "status.json"):
        assert (run / name).is_file(), name
    grid = np.asarray(Image.open(run / "samples/epoch_003.png"))
    assert grid.shape == (4 * 32, 3 * 32, 3)  # 2 samples per domain; real | translated | reconstructed
    assert np.array_equal(grid[:32, :32], np.asarray(Image.open(a / "img0.png").resize((40, 40), Image.BICUBIC))[4:36, 4:36])
    assert Image.open(run / "losses.png").info["Software"].startswith("Matplotlib")  # test_train_watch: the rest


def test_checkpoint_is_complete_and_loads_weights_only(tmp_path):
    a, b = make_domains(tmp_path)
    train(config(a, b, epochs=1, decay_epochs=0), log=quiet)
    path = Path("runs/run/checkpoints/latest.pt")
    state = torch.load(path, weights_only=True)
    for key in ("G_A", "G_B", "D_A", "D_B", "opt_G", "opt_D", "sched_G", "sched_D", "pool_A", "pool_B", "rng"):
        assert key in state, key
    assert (state["epoch"], state["step"], state["iteration"]) == (1, 0, 3)
    assert len(state["pool_A"]["images"]) == 3  # pool of 50 still filling: every fake kept
    assert len(state["opt_G"]["state"]) == len(list(tiny_generator().parameters())) * 2
    # the generator-file loader reads the same checkpoint, per direction
    from cyclebatch.models.checkpoints import load_file

    g_b = load_file(path, "BtoA")
    assert torch.equal(g_b.state_dict()["model.1.weight"], state["G_B"]["model.1.weight"])


def _final_state():
    return load_checkpoint(Path("runs/run/checkpoints/latest.pt"))


def _assert_same(x, y, where="state"):
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            _assert_same(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for k, (u, v) in enumerate(zip(x, y)):
            _assert_same(u, v, f"{where}[{k}]")
    else:
        assert x == y, where


@pytest.mark.slow
def test_resume_is_bitwise_exact(tmp_path, monkeypatch):
    a, b = make_domains(tmp_path)
    # dropout on: the global RNG matters too. 3 images per epoch, so 4 iterations cross an epoch and the lr decay.
    common = dict(epochs=1, decay_epochs=1, dropout=True, pool_size=1)  # pool draws from iteration 2
    straight = tmp_path / "straight"
    straight.mkdir()
    monkeypatch.chdir(straight)
    r = train(config(a, b, max_iterations=4, **common), log=quiet)
    assert r.iteration == 4 and not r.finished
    want = _final_state()

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    monkeypatch.chdir(resumed)
    assert train(config(a, b, max_iterations=2, workers=1, **common), log=quiet).iteration == 2
    half = _final_state()
    assert not torch.equal(half["G_A"]["model.1.weight"], want["G_A"]["model.1.weight"])
    r = train(config("", "", max_iterations=4, resume=True, **common), log=quiet)
    assert r.iteration == 4
    got = _final_state()
    for key in ("G_A", "G_B", "D_A", "D_B", "opt_G", "opt_D", "sched_G", "sched_D", "pool_A", "pool_B", "rng"):
        _assert_same(got[key], want[key], key)
    assert (got["epoch"], got["step"]) == (want["epoch"], want["step"]) == (1, 1)


def test_sigterm_saves_a_resumable_checkpoint(tmp_path):
    a, b = make_domains(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cyclebatch", "train", str(a), str(b), "--name", "sig",
                             "--epochs", "1000", "--workers", "1", *TINY_CLI],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = Path("runs/sig")
    deadline = time.time() + 60
    while not (run / "config.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)  # let it train a little, mid-epoch most likely
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM" in err
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    done = state["iteration"]
    assert done >= 1 and state["epoch"] * 3 + state["step"] == done
    r = run_cli("train", "--name", "sig", "--resume", "--max-iters", done + 2, "-q", "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["iteration"] == done + 2


def test_exported_generators_load_by_name_and_path(tmp_path):
    a, b = make_domains(tmp_path)
    train(config(a, b, name="h2z", epochs=1, decay_epochs=0), log=quiet)
    state = _final_state_of("h2z")
    for direction, key, letter in (("AtoB", "G_A", "A"), ("BtoA", "G_B", "B")):
        for source in ("h2z", f"runs/h2z/G_{letter}.safetensors"):
            net = load_generator(source, direction)
            _assert_same(net.state_dict(), state[key], f"{source} {direction}")
            assert net.metadata["direction"] == direction
            assert net.metadata["domains"] == {"A": "horses", "B": "zebras"}
            assert net.metadata["input_size"] == 32
            assert net.metadata["training"]["iterations"] == 3
            assert net.metadata["training"]["config"]["ngf"] == 8
    with pytest.raises(CycleBatchError, match="translates AtoB, not BtoA"):
        load_generator("runs/h2z/G_A.safetensors", "BtoA")
    r = run_cli("models", "info", "h2z", "--direction", "BtoA")
    assert r.returncode == 0 and "zebras -> horses" in r.stdout, r.stderr


def _final_state_of(name):
    return load_checkpoint(Path(f"runs/{name}/checkpoints/latest.pt"))


def test_init_from_loads_generators(tmp_path):
    a, b = make_domains(tmp_path)
    src = tiny_generator(seed=3, affine_norm=True)
    save_generator(src, tmp_path / "one.safetensors", {"direction": "AtoB"})
    t = Trainer(config(a, b, init_from=str(tmp_path / "one.safetensors")), log=quiet)
    _assert_same(t.gens.G_A.state_dict(), src.state_dict(), "G_A")
    assert t.gens.G_B.config == src.config and t.gens.G_A.training
    assert all(p.requires_grad for p in t.gens.parameters())
    # a resumed fine-tune needs its checkpoint only, not the source it started from
    train(config(a, b, name="ft", init_from=str(tmp_path / "one.safetensors"), max_iterations=1), log=quiet)
    (tmp_path / "one.safetensors").unlink()
    r = train(config("", "", name="ft", resume=True, max_iterations=2), log=quiet)
    assert r.iteration == 2 and load_generator("ft").config.affine_norm
    # a run holds both directions: both come back
    train(config(a, b, name="base", epochs=1, decay_epochs=0), log=quiet)
    t = Trainer(config(a, b, name="tuned", init_from="base"), log=quiet)
    base = _final_state_of("base")
    _assert_same(t.gens.G_B.state_dict(), base["G_B"], "G_B")


def test_nan_loss_stops_with_the_weights_from_before(tmp_path, monkeypatch):
    a, b = make_domains(tmp_path)
    initial = Trainer(config(a, b, name="fresh"), log=quiet).gens.G_A.state_dict()
    l1 = torch.nn.functional.l1_loss
    monkeypatch.setattr(torch.nn.functional, "l1_loss", lambda x, y: l1(x, y) * float("nan"))
    with pytest.raises(CycleBatchError, match=r"non-finite loss \(cycle_A=nan.*iteration 1"):
        train(config(a, b), log=quiet)
    state = _final_state()
    assert state["iteration"] == 0
    _assert_same(state["G_A"], initial, "G_A")


def test_two_process_ddp_on_cpu(tmp_path):
    a, b = make_domains(tmp_path, n_a=4, n_b=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "cyclebatch", "train", str(a), str(b), "--name", "ddp", "--epochs", "1",
                        "--decay-epochs", "0", "--workers", "0", *TINY_CLI],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    run = Path("runs/ddp")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.pt", "latest.pt"]
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["iteration"] == 2  # 4 images split over 2 processes, batch 1: 2 iterations each
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert r.stderr.count("epoch 1/1 done") == 1  # rank 0 alone reports
    assert load_generator("ddp", "BtoA").config.ngf == 8


def test_bad_data_folders(tmp_path):
    a, b = make_domains(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    cases = [(tmp_path / "missing", "no such folder"), (a / "img0.png", "is a file"), (empty, "no images found")]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg at all")
    cases.append((broken, "none of its 1 image files can be read"))
    for folder, reason in cases:
        with pytest.raises(CycleBatchError, match=f"^{folder}: {reason}"):
            train(config(a, folder), log=quiet, warn=quiet)
        assert not Path("runs").exists()
    r = run_cli("train", tmp_path / "missing", b, "--name", "x", *TINY_CLI)
    assert r.returncode == 1 and f"error: {tmp_path / 'missing'}: no such folder" in r.stderr, r.stderr
    r = run_cli("train", "--name", "x")
    assert r.returncode == 2 and "give both data folders" in r.stderr
    for flags in (("--lr", "nan"), ("--lr", "inf"), ("--crop-size", "30"), ("--precision", "fp8")):
        r = run_cli("train", a, b, "--name", "x", *flags)  # a mistake in the flags: the usage code, no run folder
        assert r.returncode == 2 and r.stderr.startswith("error: training config: "), (flags, r.stderr)
        assert not Path("runs").exists()


def test_corrupt_images_are_skipped_counted_and_never_crash(tmp_path):
    a, b = make_domains(tmp_path)
    (b / "garbage.png").write_bytes(b"\x89PNG but not really")  # fails at the header: skipped up front
    data = (a / "img0.png").read_bytes()
    (a / "truncated.png").write_bytes(data[: len(data) // 3])  # header fine, pixels cut: fails in a worker
    messages = []
    r = train(config(a, b, epochs=2, decay_epochs=0, workers=1), log=quiet, warn=messages.append)
    assert r.finished and r.iteration == 2 * 4
    assert r.skipped_images == 2
    assert any("garbage.png" in m for m in messages) and any("truncated.png" in m for m in messages)
    assert sum("truncated.png" in m for m in messages) == 1  # warned once, however often it is drawn
    assert all(math.isfinite(v) for v in r.losses.values())


def test_image_pool_follows_the_paper():
    pool = ImagePool(size=3, seed=0)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned as given
    later = torch.arange(100.0, 300.0).view(200, 1, 1, 1)
    out = pool.query(later).flatten()
    swapped = out != later.flatten()
    assert 60 < swapped.sum().item() < 140  # half the time a stored (older) image comes back instead
    for k in torch.nonzero(swapped).flatten().tolist():
        assert out[k] < later[k] and (out[k] < 3 or out[k] >= 100)
    assert len(pool.images) == 3


@pytest.mark.parametrize("capability, want", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                              ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_precision_on_cuda_is_bf16_from_ampere_on_and_fp16_before(monkeypatch, capability, want):
    # V100 (7.0) and T4 (7.5) report bf16 as supported, but emulate it: the compute capability decides.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    assert autocast_dtype("auto", torch.device("cuda", 1)) == want
    assert asked == [torch.device("cuda", 1)]  # the training GPU's capability, not the current one's
    assert autocast_dtype("auto", torch.device("cpu")) is None  # CPU stays fp32 whatever the GPU
    assert autocast_dtype("bf16", torch.device("cuda", 1)) == torch.bfloat16  # asked for explicitly: obeyed


class _GroupStarting(Exception):
    pass


def _torchrun_rank(monkeypatch, local_rank: int) -> dict:
    """Rank `local_rank` of 2 under torchrun on a machine that has CUDA; the process group it would
    start is recorded ({"backend": ...}) and the Trainer stopped there."""
    for key, value in {"WORLD_SIZE": "2", "RANK": str(local_rank), "LOCAL_RANK": str(local_rank)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    group = {}

    def init_process_group(backend=None, *args, **kwargs):
        group["backend"] = backend
        raise _GroupStarting

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    return group


def test_cpu_training_under_torchrun_uses_gloo_on_a_gpu_machine(tmp_path, monkeypatch):
    a, b = make_domains(tmp_path)
    group = _torchrun_rank(monkeypatch, 0)
    with pytest.raises(_GroupStarting):
        Trainer(config(a, b, device="cpu"), log=quiet)
    assert group == {"backend": "gloo"}  # NCCL cannot carry the CPU tensors of the loss all-reduce


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0"])
def test_gpu_training_under_torchrun_puts_each_rank_on_its_local_gpu(tmp_path, monkeypatch, device):
    a, b = make_domains(tmp_path)
    group = _torchrun_rank(monkeypatch, 1)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    with pytest.raises(_GroupStarting):
        Trainer(config(a, b, device=device), log=quiet)
    # the rank's own GPU is made current before NCCL starts, which binds to the current device
    assert current == [torch.device("cuda", 1)] and group == {"backend": "nccl"}
    assert rank_device(torch.device("cuda", 0), 1, 0) == torch.device("cuda", 0)  # one process: as asked


def test_training_inputs_and_weights_are_nchw_in_memory(tmp_path):
    # NCHW on every device (CUDA's InstanceNorm and reflection padding return NCHW); the uint8 batches
    # arrive N x H x W x 3, so the permute must not leave its NHWC strides behind.
    a, b = make_domains(tmp_path)
    t = Trainer(config(a, b), log=quiet)
    batch = torch.tensor([0, 255, 51], dtype=torch.uint8).expand(2, 4, 5, 3).contiguous()  # as a loader gives it
    x = t.to_input(batch)
    assert x.shape == (2, 3, 4, 5) and x.is_contiguous()
    assert torch.allclose(x[:, :, 1, 2], torch.tensor([[-1.0, 1.0, -0.6]] * 2))
    assert all(p.is_contiguous() for p in [*t.gens.parameters(), *t.dis.parameters()])
