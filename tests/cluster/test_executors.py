"""One executor interface (issue 15): inline and local honour ``after=`` as Slurm does (the Slurm side runs
on the sandbox in tests/cluster/test_slurm.py): a unit starts only once its upstream task succeeded, never
when it failed, and a unit after a list of tasks waits for all of them."""

from __future__ import annotations

import _thread
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest

from kun_hpc.cluster.executors import InlineExecutor, LocalExecutor
from kun_hpc.cluster.slurm import SlurmExecutor
from tests.conftest import REPO

EXECUTORS = {"inline": InlineExecutor, "local": lambda: LocalExecutor(max_parallel=2, poll_s=0.05)}
KINDS = ["inline", pytest.param("local", marks=pytest.mark.slow)]


def work(unit: tuple[str, str, bool]) -> str:
    """Record when the unit ran (start, end) in its own file; fail when told to."""
    folder, name, fail = unit
    start = time.time()
    time.sleep(0.2)
    Path(folder, f"{name}.json").write_bytes(orjson.dumps({"start": start, "end": time.time()}))
    if fail:
        raise ValueError(f"{name} fails on purpose")
    return name


def ran(folder: Path) -> dict[str, dict]:
    return {p.stem: orjson.loads(p.read_bytes()) for p in folder.glob("*.json")}


@pytest.mark.parametrize("kind", KINDS)
def test_a_unit_runs_after_its_upstream_and_never_after_a_failure(kind, tmp_path):
    ex = EXECUTORS[kind]()
    first = ex.submit(
        work, [(str(tmp_path), f"a{i}", i == 1) for i in range(3)], name="a", log_dir=tmp_path / "logs"
    )
    second = ex.submit(
        work,
        [(str(tmp_path), f"b{i}", False) for i in range(3)],
        name="b",
        log_dir=tmp_path / "logs",
        after=first,
    )
    last = ex.submit(work, [(str(tmp_path), "c", False)], name="c", log_dir=tmp_path / "logs", after=[second])
    seen = []
    outcomes = ex.wait([*first, *second, *last], on_done=seen.append)
    times = ran(tmp_path)
    assert sorted(times) == ["a0", "a1", "a2", "b0", "b2"]  # b1 waited for a1, which failed; c for all of b
    for i in (0, 2):
        assert times[f"b{i}"]["start"] >= times[f"a{i}"]["end"]
    assert [o.ok for o in outcomes] == [True, False, True, True, False, True, False]
    assert [o.skipped for o in outcomes] == [False, False, False, False, True, False, True]
    assert "a1 fails on purpose" in outcomes[1].error
    assert outcomes[4].error.startswith("not run: upstream") and "a1" in outcomes[4].error
    assert [o.name for o in outcomes] == ["a", "a", "a", "b", "b", "b", "c"]
    assert sorted(id(o) for o in seen) == sorted(id(o) for o in outcomes)  # on_done saw each once


@pytest.mark.slow
def test_local_runs_at_most_max_parallel_units_at_once(tmp_path):
    ex = LocalExecutor(max_parallel=2, poll_s=0.05)
    outcomes = ex.map(
        work, [(str(tmp_path), f"u{i}", False) for i in range(5)], name="u", log_dir=tmp_path / "logs"
    )
    assert all(o.ok for o in outcomes) and [o.result for o in outcomes] == [f"u{i}" for i in range(5)]
    spans = list(ran(tmp_path).values())
    at_once = max(sum(s["start"] <= t["start"] < s["end"] for s in spans) for t in spans)
    assert at_once <= 2


def slow_to_unwind(folder: str) -> None:
    """Run until interrupted, then take 0.3 s to clean up (the controller's copy of the SIGINT lands then)
    and record that the clean-up ended."""
    try:
        Path(folder, "started").touch()
        time.sleep(60)
    finally:
        time.sleep(0.3)
        Path(folder, "unwound").touch()


@pytest.mark.slow
def test_an_interrupted_local_unit_unwinds_whole(tmp_path):
    """The command's SIGINT reaches a local worker twice (its process group, then submitit's controller
    forwarding it): the second does not cut short the worker's clean-up of the first. (Without the fix this
    fails most times, not always: when the worker runs late, the two copies arrive as one pending signal.
    The next test is the deterministic check.)"""
    ex = LocalExecutor(max_parallel=1, poll_s=0.05, grace_s=10)
    tasks = ex.submit(slow_to_unwind, [str(tmp_path)], name="u", log_dir=tmp_path / "logs")

    def interrupt_once_started() -> None:
        while not (tmp_path / "started").exists():
            time.sleep(0.05)
        _thread.interrupt_main()  # as the command's SIGINT / SIGTERM handler does

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        ex.wait(tasks)
    assert (tmp_path / "unwound").exists()


def test_a_local_worker_takes_the_first_sigint_and_ignores_the_next():
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        from kun_hpc.cluster.executors import _Watched

        def unit(_):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # the second copy, while the first unwinds
                print("unwound", flush=True)

        try:
            _Watched(unit, os.getpid())(None)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["unwound", "interrupted"], out.stderr


def test_inline_map_returns_results_in_order_and_keeps_going_after_a_failure(tmp_path):
    outcomes = InlineExecutor().map(
        work, [(str(tmp_path), f"u{i}", i == 0) for i in range(3)], name="u", log_dir=tmp_path
    )
    assert [o.ok for o in outcomes] == [False, True, True]
    assert [o.result for o in outcomes] == [None, "u1", "u2"]
    assert outcomes[0].error.startswith("ValueError: u0 fails on purpose")


def test_waiting_for_a_task_never_submitted_is_an_error(tmp_path):
    other = InlineExecutor().submit(work, [(str(tmp_path), "x", False)], name="x", log_dir=tmp_path)
    ex = InlineExecutor()
    tasks = ex.submit(work, [(str(tmp_path), "y", False)], name="y", log_dir=tmp_path, after=other)
    with pytest.raises(RuntimeError, match="never submitted"):
        ex.wait(tasks)


@pytest.mark.parametrize("kind", KINDS)
def test_waiting_runs_only_those_tasks_and_what_they_wait_for(kind, tmp_path):
    ex = EXECUTORS[kind]()
    first = ex.submit(work, [(str(tmp_path), "a", False)], name="a", log_dir=tmp_path / "logs")
    seen = []
    ex.map(work, [(str(tmp_path), "m", False)], name="m", log_dir=tmp_path / "logs", on_done=seen.append)
    assert sorted(ran(tmp_path)) == ["m"] and [o.name for o in seen] == ["m"]
    assert [o.result for o in ex.wait(first)] == ["a"]


def test_after_needs_one_entry_per_unit(tmp_path):
    with pytest.raises(ValueError, match="2 entries for 3 units"):
        InlineExecutor().submit(work, [1, 2, 3], name="x", log_dir=tmp_path, after=[None, None])


class FakeSbatch(SlurmExecutor):
    """The Slurm backend with sbatch replaced: each call is recorded, its tasks numbered as Slurm would."""

    def __init__(self, max_array_size: int):
        super().__init__("/nonexistent", lambda name: {}, max_array_size)
        self.calls: list[tuple[list, str | None]] = []

    def _sbatch(self, fn, tasks, positions, name, log_dir, dependency):
        job = str(100 + len(self.entries))
        self.calls.append(([tasks[i].unit for i in positions], dependency))
        self.entries.append({"job": job})
        for k, i in enumerate(positions):
            t = tasks[i]
            t.job, t.array, t.index, t.seq = f"{job}_{k}", job, k, len(self.entries)


def test_slurm_chains_index_by_index_and_waits_for_whole_arrays_otherwise():
    ex = FakeSbatch(max_array_size=3)
    a = ex.submit(work, list(range(5)), name="a", log_dir=Path("/x"))
    assert ex.calls == [([0, 1, 2], None), ([3, 4], None)]  # arrays of at most MaxArraySize
    ex.calls.clear()
    b = ex.submit(work, ["b0", "b1", "b2", "b3", "b4"], name="b", log_dir=Path("/x"), after=a)
    assert ex.calls == [(["b0", "b1", "b2"], "aftercorr:100"), (["b3", "b4"], "aftercorr:101")]  # 102, 103
    ex.calls.clear()
    # c0 waits for task 0 of array 102: index by index; c1 for task 1 of array 103, alone: the whole array
    ex.submit(work, ["c0", "c1", "c2"], name="c", log_dir=Path("/x"), after=[b[0], b[4], None])
    assert ex.calls == [(["c0"], "aftercorr:102"), (["c1"], "afterok:103"), (["c2"], None)]
    ex.calls.clear()
    ex.submit(work, ["merge"], name="merge", log_dir=Path("/x"), after=[[*a, *b]])
    assert ex.calls == [(["merge"], "afterok:100:101:102:103")]  # every array named, in submission order
    with pytest.raises(ValueError, match="no sbatch call submitted"):
        ex.submit(
            work,
            ["d"],
            name="d",
            log_dir=Path("/x"),
            after=[InlineExecutor().submit(work, [1], name="i", log_dir=Path("/x"))[0]],
        )
