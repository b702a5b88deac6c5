"""A unit's own lines in its log (issue 16, item 10) and its resume point: a unit interrupted after k chunks,
then re-run by ``kun-hpc run`` on the local executor, says in its log where it resumed, each chunk it
committed and its totals; a unit of several shards resumes in the shard it was in."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.io.shards import read_shard
from kun_hpc.stages.base import Unit
from kun_hpc.stages.chunks import committed_chunks
from kun_hpc.stages.runner import run_unit
from tests.cluster.test_rates import CrashAfter
from tests.conftest import sample_overrides

CHUNK = 64
UPPER = "pipeline.stages=[tests.stages_for_tests:Upper]"


def unit_lines(run: Path, unit: str) -> list[str]:
    """The lines ``kun-hpc unit <unit>: ...`` of the unit's logs (wherever the executor keeps them)."""
    prefix = f"kun-hpc unit {unit}: "
    return [
        line.removeprefix(prefix)
        for log in sorted((run / "logs").rglob("*.err"))
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(prefix)
    ]


@pytest.mark.slow
def test_a_unit_log_holds_its_start_resume_point_chunk_commits_and_totals(tmp_path, capsys):
    a = sample_overrides(
        tmp_path, "shard.records_per_shard=2000", f"pipeline.chunk_records={CHUNK}", UPPER, "merge.auto=false"
    )
    assert cli.main(["shard", *a, "executor.kind=inline"]) == 0
    cfg = config.load(None, a)
    unit = plan_grid(cfg).units["upper"][0]
    with pytest.raises(RuntimeError, match="preempted"):
        run_unit(unit, CrashAfter(cfg, {}))
    assert not (tmp_path / "logs").exists() or not unit_lines(tmp_path, unit.name)  # inline: no unit log

    capsys.readouterr()
    assert cli.main(["run", *a, "executor.kind=local", "executor.max_parallel=1"]) == 0
    # the local bar of the stage counts records too (all of the stage's, the resumed unit's included)
    total = sum(1 for u in plan_grid(cfg).units["upper"] for t in u.shards for _ in read_shard(t.input))
    bar = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("upper "))
    n_units = len(plan_grid(cfg).units["upper"])
    assert (
        f"{n_units}/{n_units} " in bar
        and f"records {total:,}/{total:,}, " in bar
        and bar.rstrip().endswith("ETA 0s")
    )
    n = sum(1 for _ in read_shard(unit.shards[0].input))
    k, skipped = CrashAfter.k, CrashAfter.k * CHUNK
    chunks = -(-n // CHUNK)
    lines = unit_lines(tmp_path, unit.name)
    assert lines[0].startswith(f"start: stage upper, 1 shards, config {unit.config_hash}, host ")
    assert lines[1] == (
        f"shard 1/1 {unit.shards[0].input} -> {unit.shards[0].output}: resume after {k} committed chunks "
        f"({skipped} records), at record {skipped}"
    )
    commits = lines[2:-1]
    assert len(commits) == chunks - k
    for index, line in enumerate(commits, k):
        size = min(CHUNK, n - index * CHUNK)
        assert re.fullmatch(
            rf"shard 1/1 chunk {index} committed: in {size} out {size} rejected 0 quarantined 0; "
            r"[\d.]+ rec/s",
            line,
        ), line
    assert re.fullmatch(
        rf"done: in {n} out {n} rejected 0 quarantined 0; {n - skipped} records this attempt, [\d.]+ rec/s, "
        r"elapsed [\d.]+ s",
        lines[-1],
    ), lines[-1]
    # the other units ran from their first record
    other = plan_grid(cfg).units["upper"][1]
    assert unit_lines(tmp_path, other.name)[1].endswith(": nothing committed, from the first record")


@pytest.mark.slow
def test_a_unit_of_several_shards_resumes_in_the_shard_it_was_in(tmp_path):
    a = sample_overrides(
        tmp_path,
        "executor.kind=inline",
        "shard.records_per_shard=400",
        "pipeline.shards_per_task=2",
        f"pipeline.chunk_records={CHUNK}",
        UPPER,
    )
    assert cli.main(["shard", *a]) == 0
    cfg = config.load(None, a)
    unit = plan_grid(cfg).units["upper"][0]
    first = -(-sum(1 for _ in read_shard(unit.shards[0].input)) // CHUNK)  # chunks of the first shard
    crash = type("CrashInSecondShard", (CrashAfter,), {"k": first + 1})
    with pytest.raises(RuntimeError, match="preempted"):
        run_unit(unit, crash(cfg, {}))
    marker = run_unit(unit)
    assert [s["resumed_at_chunk"] for s in marker["shards"]] == [first, 1]
    assert not list(Path(unit.shards[0].output).parent.glob("*.chunks*")), "chunk folders go with the marker"


class InterruptAfter(CrashAfter):
    """Upper, interrupted (SIGINT's ``KeyboardInterrupt``) while processing chunk ``k``."""

    def process(self, batch):
        try:
            return super().process(batch)
        except RuntimeError:
            raise KeyboardInterrupt from None


@pytest.mark.slow
def test_an_interrupted_unit_logs_an_interrupt_not_a_failure(tmp_path, capsys, monkeypatch):
    a = sample_overrides(tmp_path, "executor.kind=inline", f"pipeline.chunk_records={CHUNK}", UPPER)
    assert cli.main(["shard", *a]) == 0
    cfg = config.load(None, a)
    unit = plan_grid(cfg).units["upper"][0]
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # as in a worker: the unit's lines go to stderr
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run_unit(unit, InterruptAfter(cfg, {}))
    last = capsys.readouterr().err.splitlines()[-1]
    done = InterruptAfter.k * CHUNK
    assert re.fullmatch(
        rf"kun-hpc unit {unit.name}: interrupted after [\d.]+ s \({done} records this attempt; "
        r"committed chunks stay; a re-run resumes after the last one\)",
        last,
    ), last


# One attempt of a unit at a time (issue 18): what Slurm's requeue leaves when the node it lost contact with
# did not die, the first attempt still running there while the requeued one starts elsewhere.
ATTEMPT = """import sys
import orjson
from kun_hpc.stages.runner import run_unit
from tests.stages.test_runner import skypile_unit
print(orjson.dumps(run_unit(skypile_unit(sys.argv[1:]))).decode(), flush=True)
"""


def skypile_unit(args: list[str]) -> Unit:
    """The ``upper`` unit over the SkyPile sample (1004 records in one shard)."""
    units = plan_grid(config.load(None, args)).units["upper"]
    (unit,) = [u for u in units if "/skypile/" in u.shards[0].input]
    return unit


def attempt(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-c", ATTEMPT, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_second_attempt_waits_for_the_first_and_takes_over_where_it_died(tmp_path):
    args = sample_overrides(
        tmp_path,
        "shard.records_per_shard=2000",
        "pipeline.chunk_records=100",
        UPPER,
        "pipeline.options.upper.sleep_s=0.5",
        "executor.kind=inline",
    )
    assert cli.main(["shard", *args]) == 0
    (unit,) = [
        u for u in plan_grid(config.load(None, args)).units["upper"] if "/skypile/" in u.shards[0].input
    ]
    shard = unit.shards[0]  # the SkyPile sample: 1004 records, 11 chunks of 100
    first = attempt(args)
    while len(committed_chunks(shard.output)) < 2:
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    # the first is paused (holding its lock) while the second starts: on a loaded machine a new Python process
    # takes longer than the first's 4.5 s of work left
    os.kill(first.pid, signal.SIGSTOP)
    second = attempt(args)
    # the second names who holds the unit and waits, writing nothing, while the first commits on
    waiting = second.stderr.readline()
    os.kill(first.pid, signal.SIGCONT)
    assert waiting.startswith(f"kun-hpc unit {unit.name}: another attempt of this unit holds "), waiting
    assert f": pid {first.pid} on host {socket.gethostname()} since " in waiting, waiting
    time.sleep(1.2)
    assert second.poll() is None and first.poll() is None
    done_before_kill = len(committed_chunks(shard.output))
    assert 2 <= done_before_kill < 11
    os.kill(first.pid, signal.SIGKILL)  # the first attempt ends at last: the second takes over
    first.wait()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    marker = orjson.loads(out)
    assert marker["shards"][0]["resumed_at_chunk"] >= done_before_kill
    ids = [r["id"] for r in read_shard(shard.output)]
    assert (
        sorted(ids) == sorted(r["id"] for r in read_shard(shard.input)) and len(set(ids)) == len(ids) == 1004
    )
    assert marker["in"] == marker["out"] == 1004
    assert not (tmp_path / "locks" / "upper" / f"{unit.name}.lock").exists()  # done: no lock file left

    # a third attempt, once the unit is done, returns its marker and writes nothing
    third = attempt(args)
    out, err = third.communicate(timeout=60)
    assert orjson.loads(out) == marker and "another attempt" not in err
