"""The sweep of dead writers' temporaries removes only what a provably dead writer left: never the live
file of a writer in another PID namespace (a container) or on another host sharing the folder."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from cyclebatch.io.files import FOREIGN_TEMP_AGE_S, TMP_MARK, sweep_dead_temps, temp_name, writer_identity


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_only_provably_dead_writers_files_are_swept(tmp_path):
    me, pid = writer_identity(), dead_pid()
    dead_here = tmp_path / f"{TMP_MARK}{pid}@{me}-0123abcd-a.png"        # this host and namespace, pid gone
    live_here = temp_name(tmp_path / "b.png")                              # this very process
    elsewhere = tmp_path / f"{TMP_MARK}{pid}@0badc0de-0123abcd-c.png"     # another container or host
    stale_elsewhere = tmp_path / f"{TMP_MARK}{pid}@0badc0de-0123abcd-d.png"
    legacy = tmp_path / f"{TMP_MARK}{pid}-0123abcd-e.png"                 # a name without an identity
    stale_dir = tmp_path / f"{TMP_MARK}{pid}@0badc0de-0123abcd-frames"    # a frame folder, long untouched
    busy_dir = tmp_path / f"{TMP_MARK}{pid}@0badc0de-0123abcd-frames2"    # old folder, a frame written now
    for p in (dead_here, live_here, elsewhere, stale_elsewhere, legacy):
        p.write_bytes(b"x")
    for d in (stale_dir, busy_dir):
        d.mkdir()
        (d / "000000.png").write_bytes(b"x")
    old = time.time() - FOREIGN_TEMP_AGE_S - 60
    for p in (stale_elsewhere, stale_dir, stale_dir / "000000.png", busy_dir):
        os.utime(p, (old, old))
    assert sweep_dead_temps(tmp_path) == 3
    left = sorted(p.name for p in tmp_path.glob(f"{TMP_MARK}*"))
    assert left == sorted(p.name for p in (live_here, elsewhere, legacy, busy_dir))


def test_a_live_writer_in_another_pid_namespace_keeps_its_file(tmp_path):
    """A writer in its own PID namespace whose pid is unused here: `os.kill(pid, 0)` here says "no such
    process", which used to get its file deleted under it."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    # A pid dead here, well behind the pid counter (pids are handed out upwards, so it is not reused before
    # the counter wraps); the writer gets exactly this pid in its own namespace.
    pid = max(300, dead_pid() - 1000)
    while True:
        try:
            os.kill(pid, 0)
            pid -= 1
        except ProcessLookupError:
            break
        except PermissionError:
            pid -= 1
    assert pid > 1
    holder = ("import os, sys, time\n"
              "from pathlib import Path\n"
              "from cyclebatch.io.files import temp_name\n"
              "tmp = temp_name(Path(sys.argv[1]) / 'out.mp4')\n"
              "tmp.write_bytes(b'a video being encoded')\n"
              "print(os.getpid(), tmp, flush=True)\n"
              "sys.stdin.read()\n")  # alive until the test closes stdin
    # In the new namespace: make the next pid the chosen one, then start the writer.
    writer = (f"import subprocess, sys\n"
              f"open('/proc/sys/kernel/ns_last_pid', 'w').write('{pid - 1}')\n"
              f"subprocess.run([sys.executable, '-c', {holder!r}, sys.argv[1]], check=True)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", writer,
                              str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    except OSError as e:
        pytest.skip(f"unshare cannot start: {e}")
    try:
        line = p.stdout.readline().split()
        if not line:
            p.kill()
            err = p.stderr.read().strip()
            if "unshare" in err:  # unshare's own refusal (not root, no user namespaces): not this code's fault
                pytest.skip(f"a new PID namespace is not allowed here: {err[-200:]}")
            pytest.fail(f"the writer did not start: {err}")
        inner_pid, tmp = int(line[0]), line[1]
        assert inner_pid == pid  # so the pid in its file name is one that does not run in this namespace
        with pytest.raises(ProcessLookupError):
            os.kill(inner_pid, 0)
        assert sweep_dead_temps(tmp_path) == 0
        assert os.path.exists(tmp)
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    assert p.returncode == 0
