"""`train --max-iters N`: a stop on an epoch's last iteration ends that epoch (samples, plot, checkpoint,
report), the summary counts the epochs that ended, `runs status` agrees, and --resume starts the next one.
Tiny networks, 3 images a domain: 3 iterations an epoch."""

from pathlib import Path

import pytest
import torch

from conftest import run_cli
from cyclebatch.train import load_checkpoint, train
from test_train import TINY_CLI, config, make_domains, quiet

RUN = Path("runs/s")


def position(run: Path = RUN) -> tuple:
    s = load_checkpoint(run / "checkpoints" / "latest.pt")
    return s["epoch"], s["step"], s["iteration"]


def test_max_iters_on_an_epochs_last_iteration_ends_that_epoch_and_resume_starts_the_next(tmp_path):
    a, b = make_domains(tmp_path)
    r = run_cli("train", a, b, "--name", "s", "--epochs", "100", "--decay-epochs", "100", "--max-iters", "3",
                "--workers", "0", *TINY_CLI)
    assert r.returncode == 0, r.stderr
    assert "stopped after 1 epoch, 3 iterations;" in r.stderr  # singular, and the epoch that ended counts
    assert r.stderr.count("epoch 1/200 done") == 1
    assert (RUN / "samples" / "epoch_001.png").is_file()
    assert position() == (1, 0, 3)
    status = run_cli("runs", "status", "s")
    assert status.returncode == 0, status.stderr
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in status.stdout.splitlines() if line.strip()}
    assert lines["epoch"] == "1 / 200"  # between epochs: no "(iteration 3 of 3 in it)"
    assert lines["iteration"] == "3 / 3"
    assert lines["state"].startswith("stopped")

    r = run_cli("train", "--name", "s", "--resume", "--max-iters", "6", "--workers", "0", "-q")
    assert r.returncode == 0, r.stderr
    assert "epoch 1/200 done" not in r.stderr  # the ended epoch's end is not done twice
    assert r.stderr.count("epoch 2/200 done") == 1
    assert "stopped after 2 epochs, 6 iterations;" in r.stderr
    assert (RUN / "samples" / "epoch_002.png").is_file() and not (RUN / "samples" / "epoch_003.png").exists()
    assert position() == (2, 0, 6)


def test_epoch_end_outputs_of_a_stop_on_the_last_iteration(tmp_path):
    a, b = make_domains(tmp_path)
    r = train(config(a, b, name="s", epochs=2, decay_epochs=2, log_every=1, max_iterations=3), log=quiet)
    assert (r.epoch, r.iteration, r.finished) == (1, 3, False)
    for name in ("samples/epoch_001.png", "losses.png", "report.html", "G_A.safetensors"):
        assert (RUN / name).is_file(), name
    assert "epoch 1 of 4" in (RUN / "report.html").read_text()
    assert not (RUN / "checkpoints" / "epoch_001.pt").exists()  # save_every 5: numbered ones keep their rule


def test_max_iters_mid_epoch_then_one_more_than_the_schedule(tmp_path):
    a, b = make_domains(tmp_path)
    logs = []
    r = train(config(a, b, name="s", epochs=1, decay_epochs=1, max_iterations=1), log=logs.append)
    assert (r.epoch, r.iteration, r.finished) == (0, 1, False)  # mid-epoch: nothing ended
    assert position() == (0, 1, 1) and not (RUN / "samples").exists()
    assert not any("done" in m for m in logs)

    logs.clear()  # resumed past the end of the schedule (6 iterations): it finishes, each epoch ended once
    r = train(config("", "", name="s", resume=True, max_iterations=100), log=logs.append)
    assert (r.epoch, r.iteration, r.finished) == (2, 6, True)
    assert [m.split(" (")[0] for m in logs if " done " in m] == ["epoch 1/2 done", "epoch 2/2 done"]
    assert position() == (2, 0, 6)


def test_max_iters_equal_to_the_whole_schedule_finishes_the_run(tmp_path):
    a, b = make_domains(tmp_path)
    r = run_cli("train", a, b, "--name", "s", "--epochs", "1", "--decay-epochs", "0", "--max-iters", "3",
                "--workers", "0", *TINY_CLI)
    assert r.returncode == 0, r.stderr
    assert "finished after 1 epoch, 3 iterations;" in r.stderr
    assert "1 epochs" not in r.stderr
    assert (RUN / "checkpoints" / "epoch_001.pt").is_file()  # the last epoch's numbered checkpoint
    r = run_cli("train", "--name", "s", "--resume", "--workers", "0", "-q")
    assert r.returncode == 0 and "already finished (1 epoch)" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_stop_at_an_epoch_end_then_resume_matches_a_straight_run(tmp_path, monkeypatch):
    a, b = make_domains(tmp_path)
    common = dict(name="s", epochs=1, decay_epochs=1, dropout=True, pool_size=1)
    for where, stops in (("straight", [6]), ("stopped", [3, 6])):
        (tmp_path / where).mkdir()
        monkeypatch.chdir(tmp_path / where)
        for k, n in enumerate(stops):
            train(config(*(("", "") if k else (a, b)), resume=k > 0, max_iterations=n, **common), log=quiet)
    straight = torch.load(tmp_path / "straight" / RUN / "checkpoints" / "latest.pt", weights_only=True)
    stopped = torch.load(tmp_path / "stopped" / RUN / "checkpoints" / "latest.pt", weights_only=True)
    for net in ("G_A", "G_B", "D_A", "D_B"):
        for name, value in straight[net].items():
            assert torch.equal(value, stopped[net][name]), (net, name)
    assert straight["sched_G"] == stopped["sched_G"]
    assert (stopped["epoch"], stopped["step"], stopped["iteration"]) == (2, 0, 6)


@pytest.mark.parametrize("epochs, iterations, want", [(1, 3, "1 epoch, 3 iterations"), (0, 1, "0 epochs, 1 iteration"),
                                                      (2, 6, "2 epochs, 6 iterations")])
def test_summary_counts_in_words(epochs, iterations, want):
    from cyclebatch.train.trainer import TrainResult

    r = TrainResult(Path("runs/x"), epochs, iterations, False, False, {}, 0)
    assert r.summary() == f"stopped after {want}"
