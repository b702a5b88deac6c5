"""The Kun chain on the 3-node sandbox (tests/cluster/nodes.py): its array tasks spread over the nodes, each
unit runs once, and the dataset equals the inline run's (issue 18).

Each node is its own host (network and UTS namespace, its own hostname), sharing the filesystem; the
nodes each Slurm task ran on are read from ``sacct``'s NodeList and checked against the host each unit's
completion marker recorded.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kun_hpc import cli
from kun_hpc.cluster.scheduler import read_registry
from tests.cluster.nodes import NODES, attempts
from tests.cluster.test_fault_drill import check_quarantine, dataset_rows, funnel
from tests.conftest import SLURM_RUN_ARGS
from tests.stages.test_kun_stages import CHAIN, GREEDY, check_accounting

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def markers(run: Path, stage: str) -> dict[str, dict]:
    return {p.stem: orjson.loads(p.read_bytes()) for p in sorted((run / "done" / stage).glob("*.json"))}


def test_a_grid_spreads_over_the_nodes_and_equals_the_inline_run(
    multinode, chain_preset, clean_chain_run, tmp_path, capsys
):
    run = tmp_path / "run"
    args = [str(chain_preset), f"run.dir={run}", *GREEDY, *SLURM_RUN_ARGS]
    assert cli.main(["run", "--wait", *args]) == 0

    # every task of the run (shard, the chain, the merge's phases) ran exactly once, on a node; the Kun
    # units covered every node, each on the node sacct names
    entries = read_registry(run)
    ran = attempts([t for e in entries for t in e["tasks"]])
    for e in entries:
        for task in e["tasks"]:
            (only,) = ran[task]
            assert only.state == "COMPLETED" and only.node.startswith("node"), (e["stage"], task, ran[task])
    hosts = {}
    for e in entries:
        if e["stage"] not in CHAIN:
            continue
        for task, unit in zip(e["tasks"], e["units"], strict=True):
            marker = markers(run, e["stage"])[unit]
            assert (marker["job"], marker["array_task"]) == (task, task.split("_")[1]), (task, marker)
            assert marker["host"] == ran[task][0].node, (unit, marker["host"], ran[task])
            hosts[unit] = marker["host"]
    assert set(hosts.values()) == {f"node{k}" for k in range(1, NODES + 1)}, hosts
    with capsys.disabled():
        print(f"\nunits per node: {sorted(hosts.items())}")

    # the dataset, its funnel and every stage's accounting are the inline run's
    assert check_accounting(run, CHAIN) == check_accounting(clean_chain_run, CHAIN)
    check_quarantine(run)
    assert dataset_rows(run) == dataset_rows(clean_chain_run)
    assert dataset_rows(clean_chain_run), "the clean run kept no record: the comparison would prove nothing"
    assert funnel(run) == funnel(clean_chain_run)
