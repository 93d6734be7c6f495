"""Watching a training run: the matplotlib loss plot, TensorBoard events read back, report.html rendered in
headless Chromium, `runs status` while a run trains, held-out images in the grids, missing extras."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import needs_chromium, parse, render
from conftest import PHOTOS, ROOT, run_cli
from cyclebatch import CycleBatchError
from cyclebatch.train import train
from cyclebatch.train.plot import plot_losses, smooth
from test_train import TINY_CLI, config, make_domains, quiet

LOSSES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")


def held_out(root: Path) -> tuple[Path, Path, list[np.ndarray], list[np.ndarray]]:
    """Two A and two B images not among the training ones (upside down, other sizes and aspect ratios);
    the centre 32 px squares a person would expect (shorter side to 32, then the middle), computed here."""
    photos = sorted(PHOTOS.glob("*.[jp][pn]g"))[:4]
    folders, want = [root / "val_a", root / "val_b"], [[], []]
    for k, path in enumerate(photos):
        im = Image.open(path).convert("RGB").transpose(Image.FLIP_TOP_BOTTOM).resize((90 - 10 * k, 50 + 5 * k))
        folder = folders[k % 2]
        folder.mkdir(exist_ok=True)
        im.save(folder / f"v{k}.png")
        w, h = im.size
        small = np.asarray(im.resize((round(w * 32 / min(w, h)), round(h * 32 / min(w, h))), Image.BICUBIC))
        y, x = (small.shape[0] - 32) // 2, (small.shape[1] - 32) // 2
        want[k % 2].append(small[y:y + 32, x:x + 32])
    return folders[0], folders[1], want[0], want[1]


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """One tiny 3-epoch run with held-out images (one of them broken), shared by the checks below."""
    root = tmp_path_factory.mktemp("watched")
    old = os.getcwd()
    os.chdir(root)
    try:
        a, b = make_domains(root)
        val_a, val_b, want_a, want_b = held_out(root)
        (val_a / "zz_broken.jpg").write_bytes(b"not a jpeg")
        messages = []
        r = train(config(a, b, epochs=2, decay_epochs=1, log_every=1, val_a=str(val_a), val_b=str(val_b)),
                  log=messages.append, warn=messages.append)
    finally:
        os.chdir(old)
    assert r.finished and r.iteration == 9
    return {"run": root / "runs" / "run", "messages": messages, "want": want_a + want_b, "val_a": val_a}


def test_held_out_images_are_the_fixed_rows_of_every_grid(watched_run):
    run, want = watched_run["run"], watched_run["want"]
    grids = [np.asarray(Image.open(run / f"samples/epoch_{e:03d}.png")) for e in (1, 2, 3)]
    assert all(g.shape == (4 * 32, 3 * 32, 3) for g in grids)  # 2 held-out images per domain, nothing else
    for g in grids:
        for row, expected in enumerate(want):  # real column: the centre crop of the held-out image itself
            assert np.abs(g[32 * row:32 * (row + 1), :32].astype(int) - expected).max() <= 1
    assert not np.array_equal(grids[0][:, 32:64], grids[2][:, 32:64])  # the translations change as it trains
    broken = [m for m in watched_run["messages"] if "zz_broken.jpg" in m]
    assert len(broken) == 1 and "held-out image skipped" in broken[0] and "\n" not in broken[0]


def test_matplotlib_plot_and_csv(watched_run):
    png = watched_run["run"] / "losses.png"
    im = Image.open(png)
    assert im.info.get("Software", "").startswith("Matplotlib")  # drawn by matplotlib, not by hand
    assert im.size[0] >= 700 and im.size[1] > im.size[0]  # panels stacked, one per loss family, lr beneath


def test_plot_drops_an_all_zero_family_and_smooths():
    rng = np.random.default_rng(0)
    rows = [{"iteration": i, "epoch": 1, "lr": 2e-4, **{k: 1 + rng.random() for k in LOSSES}} for i in range(1, 60)]
    no_idt = [{**r, "idt_A": 0.0, "idt_B": 0.0} for r in rows]
    assert plot_losses(rows, Path("with.png")) and plot_losses(no_idt, Path("without.png"))
    assert Image.open("without.png").size[1] < Image.open("with.png").size[1]  # no empty identity panel
    assert not plot_losses(rows[:1], Path("one.png")) and not Path("one.png").exists()  # one row: no plot
    noisy = np.array([r["D_A"] for r in rows])
    s = smooth(noisy)
    assert s[0] == noisy[0] and np.std(np.diff(s)) < 0.5 * np.std(np.diff(noisy))
    assert np.allclose(smooth(np.full(30, 2.5)), 2.5)  # debiased: a constant stays itself from the start


def test_tensorboard_events_hold_scalars_images_per_epoch_and_hparams(watched_run):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = watched_run["run"]
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={IMAGES: 0, SCALARS: 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {f"loss/{k}" for k in LOSSES} | {"lr"}
    assert [e.step for e in acc.Scalars("loss/cycle_A")] == list(range(1, 10))
    assert [round(e.value, 9) for e in acc.Scalars("lr")][-1] == pytest.approx(1e-4)  # decay epoch 3 of 2 + 1
    images = acc.Images("samples")
    assert [e.step for e in images] == [1, 2, 3]  # one grid per epoch
    shown = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"))
    assert np.array_equal(shown, np.asarray(Image.open(run / "samples/epoch_003.png")))
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["ngf"].number_value == 8 and start.hparams["crop_size"].number_value == 32
    assert start.hparams["val_a"].string_value == str(watched_run["val_a"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {f"loss/{k}" for k in LOSSES}


@needs_chromium
def test_report_page_in_chromium_shows_every_epoch_newest_first(watched_run):
    run = watched_run["run"]
    dom = parse(render(run / "report.html"))
    sections = [e[1]["data-heading"] for e in dom.find("section")]
    assert sections[0].startswith("Samples: held-out") and sections[1] == "Losses"  # the pictures first
    plot = dom.find("section", data_kind="image")[0]
    img = dom.elements[dom.elements.index(plot) + 2]  # section > h2, img
    assert img[0] == "img" and base64.b64decode(img[1]["src"].split(",", 1)[1]) == (run / "losses.png").read_bytes()
    assert [e[2] for e in dom.find("li")] == ["epoch 3", "epoch 2", "epoch 1"]  # the list to go back in time
    assert dom.find(data_label="epoch 3") and dom.find("input", type="range")
    grids = {e: np.asarray(Image.open(run / f"samples/epoch_{e:03d}.png")).astype(int) for e in (1, 2, 3)}
    shown = decode(dom.find("img", data_shown=True)[0][1]["src"])
    err = {e: np.abs(shown - g).mean() for e, g in grids.items()}
    assert err[3] < 6 and err[3] < min(err[1], err[2])  # the newest grid is the one on screen
    # every epoch's grid travels inside the page (the slider's frames), in order newest first
    frames = json.loads(next(e[2] for e in dom.find("script", type="application/json")
                             if '"label"' in e[2]))
    assert [f["label"] for f in frames] == ["epoch 3", "epoch 2", "epoch 1"]
    for f in frames:
        assert np.abs(decode(f["src"]) - grids[int(f["label"].split()[1])]).mean() < 6
    table = {e[2] for e in dom.find("th")}
    assert {"ngf", "crop_size", "val_a", "domain A"} <= table


@pytest.mark.slow
def test_status_while_a_run_trains_and_after(tmp_path):
    a, b = make_domains(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cyclebatch", "train", str(a), str(b), "--name", "live",
                             "--epochs", "1000", "--workers", "0", *TINY_CLI],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, status = time.time() + 120, Path("runs/live/status.json")
        while time.time() < deadline and proc.poll() is None:  # the file, cheaply, until there is progress
            if status.is_file() and json.loads(status.read_text())["iteration"] >= 2:
                break
            time.sleep(0.2)
        r = run_cli("runs", "status", "live", "--json")
        assert proc.poll() is None, proc.stderr.read()
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc and doc["state"] == "training" and doc["running"] and doc["alive"]
        assert doc["epochs"] == 1100 and doc["per_epoch"] == 3 and doc["iterations"] == 3300  # 1000 + 100 decay
        assert 1 <= doc["epoch"] <= doc["iteration"] // 3 + 1 and set(doc["losses"]) == set(LOSSES)
        assert doc["seconds_per_iteration"] > 0
        assert doc["eta_seconds"] == pytest.approx(doc["seconds_per_iteration"] * (3300 - doc["iteration"]), rel=0.01)
        text = run_cli("runs", "status", "runs/live")  # a path works as well as a name
        assert text.returncode == 0, text.stderr
        for needle in ("state        training", "epoch ", "iteration ", "cycle_A ", "s/iteration", "to finish"):
            assert needle in text.stdout, text.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    from cyclebatch.train import load_checkpoint

    done = load_checkpoint(Path("runs/live/checkpoints/latest.pt"))["iteration"]
    text = run_cli("runs", "status", "live").stdout
    assert "stopped - continue with --resume" in text and "to finish" not in text
    assert f"iteration    {done} / 3300" in text  # where the checkpoint is, not where the last update was


def test_status_of_a_killed_run_and_of_no_run(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = Path("runs/killed")
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({
        "state": "training", "pid": gone.pid, "host": socket.gethostname(), "epoch": 2, "epochs": 4, "step": 1,
        "per_epoch": 3, "iteration": 4, "iterations": 12, "losses": {}, "lr": 2e-4, "seconds_per_iteration": 0.5,
        "eta_seconds": 4.0, "updated": time.time() - 100}))
    r = run_cli("runs", "status", "killed")
    assert r.returncode == 0 and f"not running (process {gone.pid} is gone" in r.stdout, r.stdout + r.stderr
    assert "to finish" not in r.stdout
    r = run_cli("runs", "status", "nothing")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nothing: not a training run" in r.stderr


def test_without_the_train_extra_one_line_and_training_goes_on(tmp_path, monkeypatch):
    a, b = make_domains(tmp_path)
    for module in ("matplotlib", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    lines = []
    r = train(config(a, b, epochs=1, decay_epochs=0, log_every=1), log=lines.append, warn=lines.append)
    assert r.finished and r.iteration == 3
    said = [m for m in lines if "cyclebatch[train]" in m]
    assert len(said) == 1 and "matplotlib" in said[0] and "tensorboard" in said[0]
    run = Path("runs/run")
    assert not (run / "losses.png").exists() and not (run / "tensorboard").exists()
    assert (run / "losses.csv").is_file() and (run / "samples/epoch_001.png").is_file()
    assert "No loss plot yet" in (run / "report.html").read_text()


def test_held_out_folders_come_in_pairs_and_must_hold_images(tmp_path):
    a, b = make_domains(tmp_path)
    with pytest.raises(CycleBatchError, match="give both held-out folders"):
        train(config(a, b, val_a=str(a)), log=quiet)
    with pytest.raises(CycleBatchError, match=f"^{tmp_path / 'nope'}: no such folder"):
        train(config(a, b, val_a=str(tmp_path / "nope"), val_b=str(b)), log=quiet)
    assert not Path("runs").exists()
    r = run_cli("train", a, b, "--name", "x", "--val-b", b, *TINY_CLI)
    assert r.returncode == 2 and "give both held-out folders" in r.stderr


def test_resume_purges_the_killed_attempts_tail_from_tensorboard_and_survives_a_lost_held_out_folder(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    a, b = make_domains(tmp_path)
    val_a, val_b, _, _ = held_out(tmp_path)
    common = dict(epochs=1, decay_epochs=1, log_every=1, latest_every=1000)
    train(config(a, b, max_iterations=2, val_a=str(val_a), val_b=str(val_b), **common), log=quiet)
    run = Path("runs/run")
    # an attempt that logged iterations 3..4 and died before its checkpoint: its events come after the checkpoint
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tensorboard")) as w:
        for it in (3, 4):
            w.add_scalar("loss/D_A", 99.0, it)
    for f in val_a.iterdir():
        f.unlink()
    val_a.rmdir()
    warnings = []
    r = train(config("", "", resume=True, max_iterations=5, **common), log=quiet, warn=warnings.append)
    assert r.iteration == 5
    assert sum(f"{val_a}: no such folder" in w and "training images instead" in w for w in warnings) == 1
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={SCALARS: 0})
    acc.Reload()
    points = [(e.step, e.value) for e in acc.Scalars("loss/D_A")]
    assert [s for s, _ in points] == [1, 2, 3, 4, 5] and all(v < 99 for _, v in points)
