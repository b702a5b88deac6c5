"""One executor interface (issue 15): inline and local honour ``after=`` as Slurm does (the Slurm side runs
on the sandbox in tests/cluster/test_slurm.py): a unit starts only once its upstream task succeeded, never
when it failed, and a unit after a list of tasks waits for all of them."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from kun_hpc.cluster.executors import InlineExecutor, LocalExecutor

EXECUTORS = {"inline": InlineExecutor, "local": lambda: LocalExecutor(max_parallel=2, poll_s=0.05)}


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


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(EXECUTORS))
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
