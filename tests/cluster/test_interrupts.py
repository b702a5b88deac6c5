"""A local run has one owner and stops cleanly (issue 16): real `kun-hpc run` processes with the local
executor on a slow stand-in stage, real signals, real worker processes checked by pid.

SIGINT / SIGTERM end the run with "interrupted; run the same command to resume" (exit 130 / 143, no
traceback) and no worker left; a second run on the same run dir is refused naming the holder; `status`
shows the local units running; `cancel` stops the run and `status --watch` follows it until it settles;
a worker whose command was killed with SIGKILL ends itself; each re-run resumes and finishes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.cluster.scheduler import local_running
from kun_hpc.cluster.status import unit_statuses
from kun_hpc.io.lock import holder
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import read_shard
from kun_hpc.stages.chunks import committed_chunks
from tests.cluster.nodes import proc_stat, proc_state, signalled
from tests.conftest import REPO, sample_overrides

pytestmark = pytest.mark.slow
KUN = str(Path(sys.executable).parent / "kun-hpc")
UNITS = 11  # the sample in shards of 400 records
CHUNK = 64  # records a chunk


def args(run: Path) -> list[str]:
    return sample_overrides(
        run,
        "executor.kind=local",
        "executor.max_parallel=2",
        "executor.poll_interval_s=0.5",
        "shard.records_per_shard=400",
        f"pipeline.chunk_records={CHUNK}",
        "pipeline.stages=[tests.stages_for_tests:Upper]",
        "pipeline.options.upper.sleep_s=0.4",  # about 3 s a unit: signals land while units run
        "merge.auto=false",
    )


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [KUN, *cmd], cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def until(check, timeout: float = 90.0, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def done_units(run: Path) -> int:
    return len(list((run / "done" / "upper").glob("*.json")))


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def group(pgid: int) -> set[int]:
    """Every live process in a process group (the controller, the worker, what it started)."""
    out = set()
    for proc in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(int(proc.name))
        if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.add(int(proc.name))
    return out


def running_workers(run: Path) -> set[int]:
    """Once one unit is done and two run: the pids of the running units' processes."""

    def snapshot() -> set[int] | None:
        # read afresh each time: on a loaded machine the two units first seen may end before their
        # workers are seen, and the next ones run under other pids
        entries = local_running(run)
        if done_units(run) < 1 or len(entries) != 2:
            return None
        pids = set().union(*(group(e["pid"]) for e in entries.values()))
        # a controller and a worker per unit: the controller starts its worker a moment after it was recorded
        return pids if len(pids) >= 4 else None

    pids = until(snapshot, what="a unit done and two running, each a controller and a worker")

    def mid_way() -> bool:  # a unit signalled before its log opened or after its end has nothing to say
        logs = [run / "logs" / stage / unit for stage, unit in local_running(run)]
        texts = [p.read_text(errors="replace") for d in logs for p in d.glob("*.err")]
        return any(" chunk 1 committed" in t and " done: " not in t for t in texts)

    until(mid_way, what="a running unit mid-way (a chunk committed, not done)")
    return pids | (snapshot() or set())


def pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits to be delivered to ``pid`` (a stopped process keeps it until SIGCONT)."""
    try:
        fields = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (FileNotFoundError, ValueError):
        return False
    return any(int(fields[k], 16) >> (sig - 1) & 1 for k in ("SigPnd", "ShdPnd"))


def signal_mid_unit(proc: subprocess.Popen, run: Path, sig: int) -> set[int]:
    """Send ``sig`` to the command while a running unit is mid-way (a chunk committed, chunks left), made
    certain on a loaded machine: the running units' processes are stopped (SIGSTOP) while they are looked at,
    the command is signalled, and they go on (SIGCONT) once the SIGINT it sends their process groups waits in
    each. Returns their pids."""
    grid = plan_grid(config.load(None, args(run)))
    chunks = {
        u.name: [(s.output, -(-sum(1 for _ in read_shard(s.input)) // CHUNK)) for s in u.shards]
        for u in grid.units["upper"]
    }

    def mid_way(stage: str, unit: str) -> bool:
        done = [len(committed_chunks(out)) for out, _ in chunks[unit]]
        left = sum(n for _, n in chunks[unit]) - sum(done)
        return read_marker(run, stage, unit) is None and sum(done) >= 1 and left > 0

    end = time.monotonic() + 90
    while time.monotonic() < end:
        running = local_running(run)
        pids = set().union(*(group(e["pid"]) for e in running.values()))
        stopped = {pid for pid in pids if signalled(pid, signal.SIGSTOP)}
        try:
            if any(mid_way(stage, unit) for stage, unit in running):
                proc.send_signal(sig)
                until(
                    lambda held=stopped: all(pending(p, signal.SIGINT) or not alive(p) for p in held),
                    timeout=60,
                    what="the command to signal its units' processes",
                )
                return stopped
        finally:
            for pid in stopped:
                signalled(pid, signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError("no running unit was seen mid-way")


def rerun_resumes(run: Path, capsys) -> None:
    """The same command again runs only the units without a marker, and the run ends complete."""
    before = done_units(run)
    assert 0 < before < UNITS
    assert cli.main(["run", *args(run)]) == 0
    assert f"pending units: upper={UNITS - before}" in capsys.readouterr().err
    grid = plan_grid(config.load(None, args(run)))
    markers = [read_marker(run, "upper", u.name) for u in grid.units["upper"]]
    assert sum(m["out"] for m in markers) == sum(m["in"] for m in markers) == 3504  # every sample record
    assert not (run / "running").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_workers_and_the_same_command_resumes(sig, tmp_path, capsys):
    proc = start(["run", *args(tmp_path)])
    pids = running_workers(tmp_path)
    if sig == signal.SIGINT:  # one owner: a second run is refused, naming the holder
        assert cli.main(["run", *args(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert (
            f"run dir {tmp_path} is in use by `kun-hpc run` pid {proc.pid} on host {socket.gethostname()}"
            in err
        )

        def two_running():  # a unit may be between its end and the next one's record: look again
            rows = unit_statuses(config.load(None, args(tmp_path)))
            return rows if sum(r.state == "running" for r in rows) == 2 else None

        rows = until(two_running, timeout=30, what="two units running in the status")
        running = [r for r in rows if r.state == "running"]
        assert len(running) == 2 and all(
            r.job.startswith("pid ") and Path(r.log).parent.name == r.unit for r in running
        )
        assert any(r.state == "pending" and f"pid {proc.pid}" in r.why for r in rows)
    pids |= signal_mid_unit(proc, tmp_path, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert "kun-hpc: interrupted; run the same command to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert [p for p in pids if alive(p)] == []
    assert holder(tmp_path) is None and local_running(tmp_path) == {}
    assert not (tmp_path / "running").exists(), "no empty running/<stage>/ folders stay"
    # the stopped units' logs say they were interrupted (and what a re-run does), not that they failed
    logs = [p.read_text(errors="replace") for p in (tmp_path / "logs" / "upper").rglob("*.err")]
    assert any("interrupted after" in log for log in logs)  # a unit just started may have logged nothing
    assert not any(": failed after" in log for log in logs)
    # nothing runs: status shows no ETA for the stage, and says it is not running
    capsys.readouterr()
    assert cli.main(["status", *args(tmp_path)]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("│ upper "))
    assert row.rstrip(" │").endswith("- (not running)"), row
    rerun_resumes(tmp_path, capsys)


def test_cancel_stops_a_local_run_and_status_watch_follows_it(tmp_path, capsys):
    proc = start(["run", *args(tmp_path)])
    pids = running_workers(tmp_path)
    watch = start(["status", "--watch", str(tmp_path)])
    time.sleep(2)
    assert watch.poll() is None, "status --watch follows a running local run"
    assert cli.main(["cancel", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"kun-hpc cancel: stopped `kun-hpc run` pid {proc.pid} on host {socket.gethostname()}" in err
    # 2 running, or 1 while the executor is between one unit's end and the next one's record
    assert re.search(r"and its [12] running units?\n", err), err
    assert proc.wait(timeout=60) == 143  # cancel returned once the run had let go
    assert [p for p in pids if alive(p)] == []
    watch.communicate(timeout=30)
    assert watch.returncode == 1  # settled, not done
    rerun_resumes(tmp_path, capsys)


def test_workers_of_a_killed_command_end_themselves(tmp_path, capsys):
    proc = start(["run", *args(tmp_path)])
    pids = running_workers(tmp_path)
    proc.kill()
    proc.communicate(timeout=10)
    until(lambda: not [p for p in pids if alive(p)], timeout=60, what="the workers to end")
    assert holder(tmp_path) is None  # the kernel released the dead command's lock
    rows = unit_statuses(config.load(None, args(tmp_path)))
    assert not [r for r in rows if r.state in ("running", "pending")]  # its records name a dead command
    rerun_resumes(tmp_path, capsys)
