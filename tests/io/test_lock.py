"""One owner per run directory (issue 16): a second holder is refused naming the first; the lock is gone
with its holder, even after SIGKILL; a command that fails before any work leaves no run folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kun_hpc.io.lock import RunDirInUse, holder, run_lock

HOLD = """import sys, time
from kun_hpc.io.lock import run_lock
with run_lock(sys.argv[1], "run"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_holder_holds_nothing(tmp_path):
    proc = hold(tmp_path)
    try:
        who = holder(tmp_path)
        assert (who.command, who.pid, who.host) == ("run", proc.pid, socket.gethostname())
        with pytest.raises(RunDirInUse) as e, run_lock(tmp_path, "merge", wait_s=0.2):
            pass
        assert str(e.value).startswith(
            f"run dir {tmp_path} is in use by `kun-hpc run` pid {proc.pid} on host "
        )
        assert str(e.value).endswith(f"; wait for it to end, or kun-hpc cancel {tmp_path}")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert holder(tmp_path) is None  # the kernel released it; the file still names the dead holder
    with run_lock(tmp_path, "merge"):
        assert holder(tmp_path).command == "merge" and holder(tmp_path).mine
        with run_lock(tmp_path, "run"):  # nested in one process: one hold
            pass
        assert holder(tmp_path).command == "merge"
    assert holder(tmp_path) is None


def test_a_command_that_fails_before_any_work_leaves_no_run_folder(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(ValueError), run_lock(run, "run"):
        assert run.is_dir()
        raise ValueError("bad config")
    assert not run.exists()
    with run_lock(run, "run"):
        (run / "config.yaml").write_text("x")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "lock"]
