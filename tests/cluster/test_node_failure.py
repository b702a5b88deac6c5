"""A node lost mid-run, and a node drained, on the 3-node sandbox (issue 18, item 4; docs/checkpointing.md,
"A node fails or is drained").

The node-failure test runs the fault drill's chain (label -> point -> answer -> rules, the tiny Qwen2 on
transformers, 4 units a stage, one 2-CPU task a node) on Slurm, waits until a node runs a Label unit that
committed a chunk and has chunks left, and kills that node (every process in its namespace, then DOWN, as
Slurm marks a node that stopped answering). Slurm requeues the lost units on the two other nodes; they
resume at their committed chunks, and the run (merge job included) ends with the clean inline run's
dataset, funnel and accounting, with no re-run by the user. ``kun-hpc status`` is read every second
throughout and must never show a unit failed or cancelled; it names the lost node while the unit runs again,
and ``kun-hpc logs`` names it for each requeued unit.

The drain test runs a cheaper chain (tests/stages_for_tests.py: ``Upper``, which sleeps per chunk, then
``Synth``, which makes pairs; a kun-hpc run with its merge job all the same) and drains a node that holds a
running unit: that unit finishes there, once, and nothing starts there afterwards.
"""

from __future__ import annotations

import io
import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from rich.console import Console

from kun_hpc import cli
from kun_hpc.cluster import scheduler
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.cluster.scheduler import MERGE_STAGE, read_registry, record_submission
from kun_hpc.cluster.status import UnitStatus, merge_job_state, print_status, requeue_lines
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.stages.chunks import committed_chunks
from tests.cluster import nodes
from tests.cluster.test_fault_drill import Drill, check_quarantine, dataset_rows, funnel, squeue
from tests.conftest import SLURM_RUN_ARGS
from tests.stages.test_kun_stages import CHAIN, GREEDY, check_accounting, stage_files

SETTLE_S = 420
WHEN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"  # sacct's times
CHEAP_STAGES = ["upper", "synth"]
CHEAP = [
    "pipeline.stages=[tests.stages_for_tests:Upper,tests.stages_for_tests:Synth]",
    "pipeline.options.upper.sleep_s=1",  # per chunk of 3 records: a unit runs ~4 s, long enough to drain
]


# ------------------------------------------------------------------------------------------- helpers
def task_nodes() -> dict[str, str]:
    """Task -> node of every running job in the queue (one squeue call)."""
    return dict(line.split("=", 1) for line in squeue("RUNNING", fmt="%i=%N"))


def run_tasks(run: Path) -> set[str]:
    """Every job the run submitted: the stages' array tasks, the merge job and the merge's phase arrays."""
    return {t for e in read_registry(run) for t in e["tasks"]}


def settle(watch: Drill, deadline: float) -> list[list[UnitStatus]]:
    """Read the status every second until every job of the run has left the queue; what status read."""
    looks = []
    while time.time() < deadline:
        looks.append(watch.look())
        if not run_tasks(watch.run) & set(squeue()):
            looks.append(watch.look())
            return looks
        time.sleep(1)
    raise AssertionError(f"the run's jobs did not settle in {SETTLE_S}s")


def record_ids(paths: Iterable[Path]) -> Counter:
    return Counter(r["id"] for p in paths for r in read_shard(p))


def lost_and_duplicated(run: Path, clean: Path, stages: list[str]) -> tuple[int, int]:
    """(records lost, records written more than once), counted from the files: each stage must write each
    record of its input exactly once, kept or rejected (its input: the shards, then the stage before's
    kept records), and the dataset must hold the clean run's records, each once."""
    shards = run / "shards"
    inputs = record_ids(p for p in list_shards(shards) if "quarantine" not in p.relative_to(shards).parts)
    lost = duplicated = 0
    for stage in stages:
        outputs, rejects = stage_files(run, stage)
        written = record_ids([*outputs, *rejects])
        assert written.keys() <= inputs.keys(), (stage, written.keys() - inputs.keys())
        lost += len(inputs.keys() - written.keys())
        duplicated += sum(n - 1 for n in written.values())
        inputs = record_ids(outputs)
    dataset = Counter(r["id"] for r in dataset_rows(run))
    lost += len({r["id"] for r in dataset_rows(clean)} - dataset.keys())
    duplicated += sum(n - 1 for n in dataset.values())
    return lost, duplicated


def unit_starts(run: Path, stage: str, unit: str) -> list[str]:
    """The start lines a unit wrote to its logs, one per attempt (the requeued task's log is appended to)."""
    mark = f"kun-hpc unit {unit}: start:"
    return [
        line
        for p in sorted((run / "logs" / stage).glob("*_log.err"))
        for line in p.read_text().splitlines()
        if mark in line
    ]


def rendered(rows: list[UnitStatus]) -> str:
    """What ``kun-hpc status`` prints for these rows (its table and per-unit lines)."""
    out = io.StringIO()
    print_status(rows, Console(file=out, width=200))
    return out.getvalue()


# --------------------------------------------------------------------------------------- node failure
# What squeue and sacct -D said on the sandbox while array task 2_1's node (node2) was set DOWN: first only
# the lost attempt's row while the task waits again (BeginTime), then the attempt that followed on node3.
# 2_2 is added: a task submitted with --no-requeue, whose attempt on node2 is its last.
QUEUE_AFTER_LOSS = "2_1|PENDING|BeginTime|1\n2_0|RUNNING|None|0\n"
SACCT_AFTER_LOSS = """2_0|RUNNING|0:0|node1|2026-12-01T07:52:07|Unknown|2026-12-01T07:52:06
2_1|NODE_FAIL|0:0|node2|2026-12-01T07:52:07|2026-12-01T07:52:12|2026-12-01T07:52:06
"""
SACCT_AT_THE_END = """2_0|COMPLETED|0:0|node1|2026-12-01T07:52:07|2026-12-01T07:52:47|2026-12-01T07:52:06
2_1|NODE_FAIL|0:0|node2|2026-12-01T07:52:07|2026-12-01T07:52:12|2026-12-01T07:52:06
2_2|NODE_FAIL|0:0|node2|2026-12-01T07:52:07|2026-12-01T07:52:12|2026-12-01T07:52:06
2_1|COMPLETED|0:0|node3|2026-12-01T07:52:47|2026-12-01T07:53:27|2026-12-01T07:52:12
"""


def test_a_requeued_task_reads_pending_never_failed_and_logs_name_the_lost_node(tmp_path, monkeypatch):
    """The scheduler's view of a task Slurm requeued after its node failed, from the calls' real output:
    pending with its restart while sacct still shows only the lost attempt (read alone, it looks failed),
    then done, its lost attempt named; a task not requeued (2_2, ``--no-requeue``) is a failure, no
    restart. One squeue and one sacct call per refresh; squeue failing is never an empty queue."""
    said = {"squeue": QUEUE_AFTER_LOSS, "sacct": SACCT_AFTER_LOSS, "squeue_rc": 0}
    asked: list[list[str]] = []

    def fake_run(argv, **kw):
        asked.append(argv)
        rc = said["squeue_rc"] if argv[0] == "squeue" else 0
        return subprocess.CompletedProcess(argv, rc, said[argv[0]], "slurm_load_jobs error: timed out")

    monkeypatch.setattr(scheduler.subprocess, "run", fake_run)
    view = scheduler.SchedulerView(0)
    assert view.states({"2_0", "2_1"}) == {"2_0": ("RUNNING", "None"), "2_1": ("PENDING", "BeginTime")}
    assert [a.event() for a in view.lost("2_1")] == ["lost node node2 (NODE_FAIL at 2026-12-01T07:52:12)"]
    assert (view.restarts("2_1"), view.lost("2_0"), view.calls) == (1, [], Counter(squeue=1, sacct=1))
    assert asked[-1][-3:] == ["2", "-o", scheduler.SACCT_FIELDS] and "-D" in asked[-1]

    said |= {"squeue": "", "sacct": SACCT_AT_THE_END}
    assert view.states({"2_1", "2_2"}, force=True) == {
        "2_1": ("COMPLETED", "exit 0:0"),
        "2_2": ("NODE_FAIL", "exit 0:0"),
    }
    assert ([a.node for a in view.lost("2_1")], view.lost("2_2")) == (["node2"], [])

    record_submission(
        tmp_path, {"stage": "label", "job": "2", "tasks": ["2_0", "2_1", "2_2"], "units": ["l0", "l1", "l2"]}
    )
    assert requeue_lines(tmp_path) == [
        "l1: job 2_1 lost node node2 (NODE_FAIL at 2026-12-01T07:52:12), requeued by Slurm, restart 1"
    ]

    said["squeue_rc"] = 1
    monkeypatch.setattr(scheduler, "SQUEUE_TRIES", 2)
    with pytest.raises(RuntimeError, match="squeue failed 2 times: slurm_load_jobs error: timed out"):
        view.states({"2_1"}, force=True)
    # what a finished run's status and logs read then: the merge job and the requeues unknown, and why
    record_submission(tmp_path, {"stage": MERGE_STAGE, "job": "9", "tasks": ["9"], "units": ["merge"]})
    why = "squeue failed 2 times: slurm_load_jobs error: timed out"
    assert merge_job_state(tmp_path) == ("9", "UNKNOWN", why)
    assert requeue_lines(tmp_path) == [f"cannot list them: {why}"]


def lose_a_node(watch: Drill, deadline: float) -> tuple[str, dict[str, tuple[str, int]], float]:
    """Wait until a node runs a Label unit mid-way (a chunk committed, chunks left), then kill that node.
    Returns the node, ``{unit: (task, chunks committed)}`` of every unit it ran, and when it died."""
    grid = plan_grid(watch.cfg)
    units = {u.name: u for s in grid.stages for u in grid.units[s]}
    looked = 0.0
    while time.time() < deadline:
        found = watch.candidates(("label",), 1)
        where = task_nodes() if found else {}
        node = next((where[task] for task, _, _ in found if task in where), None)
        if node:
            # frozen, then looked at again: on a loaded machine the unit picked may have ended since, or
            # another started there; what the node ran is read while it changes nothing
            nodes.signal_node(node, signal.SIGSTOP)
            where = task_nodes()
            if not any(where.get(task) == node for task, _, _ in watch.candidates(("label",), 1)):
                nodes.signal_node(node, signal.SIGCONT)
                continue
            tasks = watch.tasks()
            there = {tasks[t][1]: t for t, n in where.items() if n == node and t in tasks}
            ran = {u: (t, len(committed_chunks(units[u].shards[0].output))) for u, t in there.items()}
            nodes.kill_node(node)
            return node, ran, time.time()
        if time.time() - looked > 1:
            watch.look()
            looked = time.time()
        time.sleep(0.1)
    raise AssertionError("no Label unit was seen mid-way on a node")


@pytest.mark.slurm
def test_a_node_lost_mid_run_is_requeued_and_resumes_with_nothing_lost(
    multinode, chain_preset, clean_chain_run, tmp_path, capsys
):
    began = time.time()
    run = tmp_path / "run"
    args = [str(chain_preset), f"run.dir={run}", *GREEDY, *SLURM_RUN_ARGS]
    assert cli.main(["run", *args]) == 0  # shards, submits the chained arrays and the merge job, returns
    watch = Drill(run, random.Random(0))
    deadline = time.time() + SETTLE_S
    node, lost, died = lose_a_node(watch, deadline)
    looks = settle(watch, deadline)
    rows = {r.unit: r for r in looks[-1]}

    # every unit done, without a re-run; status never showed one failed or cancelled on the way
    assert {u: r.state for u, r in rows.items()} == dict.fromkeys(rows, "done")
    for unit, states in watch.seen.items():
        assert not {"failed", "cancelled"} & set(states), (unit, states)
    assert merge_job_state(run)[1] == "COMPLETED"

    # the lost units were requeued by Slurm: their attempt on the node ended NODE_FAIL, the next one ran
    # elsewhere and resumed at the chunks committed when the node died
    history = nodes.attempts(run_tasks(run))
    resumed = {}
    for unit, (task, chunks) in lost.items():
        (first, second) = history[task]
        assert first[:2] == ("NODE_FAIL", node), (task, history)
        assert second[0] == "COMPLETED" and second[1] != node, (task, history)
        marker = read_marker(run, unit.rsplit("-", 1)[0], unit)
        assert marker["restarts"] >= 1, marker
        resumed[unit] = marker["shards"][0]["resumed_at_chunk"]
        assert resumed[unit] >= chunks, (unit, marker)
        starts = unit_starts(run, unit.rsplit("-", 1)[0], unit)
        assert len(starts) == 2 and f"host {node}," in starts[0] and "restarts 0" in starts[0], starts
        assert f"host {node}," not in starts[1] and "restarts 1" in starts[1], starts
    assert any(chunks >= 1 for _, chunks in lost.values()), lost
    assert all(len(a) == 1 for t, a in history.items() if t not in {t for t, _ in lost.values()}), history

    # while a lost unit waited or ran again, status said it restarted (never failed), and why once sacct had
    # the lost attempt's row (squeue's restart count can come first: then `restart 1, requeued by Slurm`)
    said = {}
    for look in looks:
        for r in look:
            if r.unit in lost and r.restarted:
                assert r.state in ("pending", "running"), r
                assert r.restarted == "restart 1, requeued by Slurm" or "lost node" in r.restarted, r
                if "lost node" in r.restarted:
                    said.setdefault(r.unit, r)
    assert said.keys() == lost.keys(), said
    text = rendered(list(said.values()))
    for unit, r in said.items():
        why = f"{r.why}; " if r.why else ""  # pending: Slurm's reason (BeginTime, Resources)
        line = f"  {unit}: {r.state} (job {lost[unit][0]}) {why}restart 1 after the job lost node {node} "
        assert re.search(re.escape(line) + rf"\(NODE_FAIL at {WHEN}\)\n", text), text

    # logs names the node's loss for each requeued unit; nothing failed
    capsys.readouterr()
    assert cli.main(["logs", *args]) == 0
    logs = capsys.readouterr().out
    assert logs.startswith("no failed units"), logs
    for unit, (task, _) in lost.items():
        line = re.escape(f"  {unit}: job {task} lost node {node} (NODE_FAIL at ")
        assert re.search(line + rf"{WHEN}\), requeued by Slurm, restart 1\n", logs), logs
    assert logs.count("requeued by Slurm, restart") == len(lost), logs

    # the clean run's dataset, funnel and accounting; nothing lost, nothing twice
    assert check_accounting(run, CHAIN) == check_accounting(clean_chain_run, CHAIN)
    check_quarantine(run)
    assert dataset_rows(run) == dataset_rows(clean_chain_run) != []
    assert funnel(run) == funnel(clean_chain_run)
    gone, twice = lost_and_duplicated(run, clean_chain_run, CHAIN)
    assert (gone, twice) == (0, 0)
    unit_lines = "\n".join(line for line in text.splitlines() if line.startswith("  "))
    with capsys.disabled():
        print(
            f"\nnode failure: {node} killed {died - began:.0f} s into the"
            f" test; units requeued {len(lost)} ({', '.join(f'{u} job {t}' for u, (t, _) in lost.items())}),"
            f" chunks resumed {sum(resumed.values())} (committed at the loss:"
            f" {sum(c for _, c in lost.values())}), records lost {gone}, records duplicated {twice},"
            f" test {time.time() - began:.0f} s\nstatus said:\n{unit_lines}\nlogs said:\n{logs}"
        )


# ------------------------------------------------------------------------------------------ drained node
@pytest.mark.slurm
def test_a_drained_node_finishes_its_units_and_takes_no_new_ones(multinode, chain_preset, tmp_path, capsys):
    began = time.monotonic()
    clean = tmp_path / "clean"
    # the reference without Upper's sleep (it changes no record, and takes 16 s inline)
    inline = ["executor.kind=inline", *CHEAP, "pipeline.options.upper.sleep_s=0"]
    assert cli.main(["run", str(chain_preset), f"run.dir={clean}", *inline]) == 0
    run = tmp_path / "run"
    args = [str(chain_preset), f"run.dir={run}", *CHEAP, *SLURM_RUN_ARGS]
    assert cli.main(["run", *args]) == 0
    watch = Drill(run, random.Random(0))
    deadline = time.time() + SETTLE_S
    tasks = watch.tasks()
    mine: dict[str, str] = {}  # task -> unit, on the node drained
    while not mine:  # an Upper unit running (it sleeps a second a chunk: the drain lands mid-unit)
        assert time.time() < deadline, "no unit of the run was seen running"
        where = {t: n for t, n in task_nodes().items() if tasks.get(t, ("",))[0] == "upper"}
        node = min(where.values(), default="")
        mine = {t: tasks[t][1] for t, n in where.items() if n == node}
        time.sleep(0.2)
    nodes.drain_node(node)
    drained = time.strftime("%Y-%m-%dT%H:%M:%S")
    # what runs there now ran when it was drained (a task may have ended, and another started, just before)
    mine |= {t: tasks[t][1] for t, n in task_nodes().items() if n == node and t in tasks}
    looks = settle(watch, deadline)

    # what ran on the node when it was drained finished there, once; nothing started there afterwards
    # (what ran there before, the shard step's tasks, ended before the drain)
    history = nodes.attempts(run_tasks(run))
    assert all(len(a) == 1 and a[0][0] == "COMPLETED" for a in history.values()), history
    there = {t: a for t, (a,) in history.items() if a[1] == node}
    for task in mine:
        assert there[task][2] <= drained, (task, there[task])
    assert all(a[3] <= drained for t, a in there.items() if t not in mine), (node, drained, mine, there)
    assert any(a[0][2] > drained for a in history.values()), history  # the run went on, on the other nodes
    assert nodes.node_state(node) == "drained"

    rows = {r.unit: r.state for r in looks[-1]}
    assert rows == dict.fromkeys(rows, "done")
    for unit, states in watch.seen.items():
        assert not {"failed", "cancelled"} & set(states), (unit, states)
    assert merge_job_state(run)[1] == "COMPLETED"
    assert dataset_rows(run) == dataset_rows(clean) != []
    assert funnel(run) == funnel(clean)
    assert lost_and_duplicated(run, clean, CHEAP_STAGES) == (0, 0)
    with capsys.disabled():
        print(
            f"\ndrain: {node} drained while it ran {sorted(mine.values())}, which finished there; then"
            f" {sum(a[0][2] > drained for a in history.values())} jobs started, on"
            f" {sorted({a[0][1] for a in history.values() if a[0][2] > drained})}; test"
            f" {time.monotonic() - began:.0f} s"
        )
