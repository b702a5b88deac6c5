"""A node Slurm loses contact with while its work goes on (issue 18): its slurmd is killed (a crash of the
daemon, or a network partition between the node and the controller look alike to Slurm) and the node set
DOWN, but the unit it runs lives on there. Slurm requeues that unit on another node: two attempts of one unit
at once, what datatrove's users met as "the same rank running on two nodes" (datatrove #291/#292).

kun-hpc's unit lock (:func:`kun_hpc.io.lock.unit_lock`) makes the requeued attempt wait, saying who holds
the unit, until the first ends; the first commits the unit, the second finds its marker and writes nothing.
The stage's output equals an inline run's: no record lost, none twice.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import submitit
from omegaconf import OmegaConf

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.cluster.scheduler import read_registry
from kun_hpc.cluster.status import unit_statuses
from kun_hpc.io.markers import read_marker
from kun_hpc.stages.chunks import committed_chunks
from tests.cluster import nodes
from tests.cluster.nodes import attempts
from tests.cluster.test_fault_drill import squeue
from tests.cluster.test_slurm import stage_records
from tests.conftest import REPO, SAMPLE, SLURM_RUN_ARGS

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLEEP_S = 4  # per chunk of 100 records: 11 chunks, ~45 s for the unit, so that the two attempts overlap


def preset(folder: Path, sleep_s: float) -> Path:
    """One unit: the SkyPile sample (1004 records, one shard) through the test stage ``upper``, in chunks of
    100 records, ``sleep_s`` seconds each."""
    path = folder / "preset.yaml"
    cfg = {
        "run": {"name": "kun-test", "dir": str(folder / "run")},
        "corpora": [{"name": "skypile", "format": "skypile", "paths": [str(SAMPLE / "skypile")]}],
        "shard": {"records_per_shard": 2000},
        "pipeline": {
            "stages": ["tests.stages_for_tests:Upper"],
            "chunk_records": 100,
            "options": {"upper": {"sleep_s": sleep_s}},
        },
        "merge": {"auto": False},
        "executor": {"poll_interval_s": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


def committed(lines: list[str]) -> list[int]:
    """The chunks an attempt's log lines say it committed, in order."""
    return [int(m.group(1)) for line in lines if (m := re.match(r"shard 1/1 chunk (\d+) committed", line))]


def test_a_unit_on_a_node_slurm_lost_runs_once_and_its_requeued_copy_writes_nothing(
    multinode, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the jobs import tests.stages_for_tests
    clean = preset(tmp_path / "clean", 0)
    assert cli.main(["run", str(clean), "executor.kind=inline"]) == 0

    args = [str(preset(tmp_path / "slurm", SLEEP_S)), *SLURM_RUN_ARGS]
    assert cli.main(["run", *args]) == 0  # submits the unit's array and returns
    cfg = config.load(args[0], args[1:])
    run = Path(cfg.run.dir)
    (unit,) = plan_grid(cfg).units["upper"]
    (entry,) = [e for e in read_registry(run) if e["stage"] == "upper"]
    (task,) = entry["tasks"]

    # once the unit has committed a chunk, its node loses its slurmd and goes DOWN; the unit lives on there
    deadline = time.time() + 300
    while len(committed_chunks(unit.shards[0].output)) < 1:
        assert time.time() < deadline, "the unit committed no chunk in 300 s"
        time.sleep(0.2)
    node = nodes.node_of(task)
    assert node in nodes.NODE_NAMES, node
    chunks_then = len(committed_chunks(unit.shards[0].output))
    nodes.lose_contact(node)
    try:
        seen = []
        while task in squeue():
            (row,) = [r for r in unit_statuses(cfg) if r.unit == unit.name]
            if not seen or seen[-1] != row.state:
                seen.append(row.state)
            time.sleep(1)
    finally:
        nodes.revive_nodes()
    (row,) = [r for r in unit_statuses(cfg) if r.unit == unit.name]
    with capsys.disabled():
        print(f"\nunit on {node} after {chunks_then} chunks; status showed {seen}; sacct: {attempts([task])}")

    # Slurm ran two attempts: the lost one, and the requeued one on another node
    (lost, requeued) = attempts([task])[task]
    assert lost[:2] == ("NODE_FAIL", node) and requeued[0] == "COMPLETED" and requeued[1] != node
    # the second waited for the first, naming it; then the first's chunks and the second's are disjoint and
    # together every chunk once (the first finished the unit, or died when Slurm tore its step down and the
    # second resumed after its last chunk)
    log = submitit.SlurmJob(folder=entry["log_dir"], job_id=task).paths.stderr.read_text(errors="replace")
    prefix = f"kun-hpc unit {unit.name}: "
    lines = [line.removeprefix(prefix) for line in log.splitlines() if line.startswith(prefix)]
    # the first wait line (one a minute while it waits)
    wait = next(k for k, line in enumerate(lines) if line.startswith("another attempt of this unit holds "))
    assert f" on host {node} (Slurm job {task}) since " in lines[wait], lines[wait]
    starts = [k for k, line in enumerate(lines) if line.startswith("start: ")]
    first_end = starts[1] if len(starts) > 1 else len(lines)
    first, second = committed(lines[:first_end]), committed(lines[first_end:])
    assert sorted(first + second) == list(range(11)), (first, second)
    marker = read_marker(run, "upper", unit.name)
    if second:  # the requeued attempt took over where the first stopped
        assert (marker["host"], marker["restarts"]) == (requeued[1], 1), marker
        assert marker["shards"][0]["resumed_at_chunk"] == len(first) == second[0]
    else:  # the first finished where it was; the second found its marker, and said so
        assert (marker["host"], marker["restarts"]) == (node, 0), marker
        assert lines[-1] == f"the other attempt ended with the unit done (host {node}): nothing to do", lines
    assert "failed" not in seen and "cancelled" not in seen, seen
    assert row.state == "done"
    # every record once: the stage's output is the inline run's
    assert stage_records(run, "upper") == stage_records(Path(config.load(str(clean)).run.dir), "upper")
    with capsys.disabled():
        print(f"first attempt on {node} committed chunks {first}, the requeued one on {requeued[1]} {second}")
