"""Fault drill on the Slurm sandbox: the Kun chain (label -> point -> answer -> rules, tiny Qwen2 on
transformers) over a slice of the bundled SkyPile sample with one corrupted input file, while random array
tasks are killed with ``kill -9`` and others requeued with ``scontrol requeue``; then re-runs until done.

What it proves (docs/checkpointing.md, "Fault drill"): the merged dataset equals a clean run's, every record
is accounted for in every stage, the corrupted line is quarantined (file, position, reason) and counted once,
the report's funnel equals the clean run's, and ``status`` / ``logs`` told the truth on the way.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import orjson
import pytest
from omegaconf import DictConfig

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.cluster.scheduler import read_registry
from kun_hpc.cluster.status import UnitStatus, merge_job_state, unit_statuses
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import list_shards, read_manifest, read_shard
from kun_hpc.stages import chunks as base
from kun_hpc.stages.chunks import committed_chunks
from kun_hpc.stages.runner import run_unit
from tests.cluster.nodes import signalled
from tests.cluster.test_slurm import _array_task
from tests.conftest import SLURM_RUN_ARGS, sample_overrides, start_sandbox
from tests.stages.test_kun_stages import CHAIN, GREEDY, _sample_lines, check_accounting, write_preset

SEED = 8
RECORDS_PER_FILE = 24  # two input files -> 4 shards of <= 12 records -> 4 units per stage
CHUNK = 3  # 4 chunks per Label unit: a fault lands mid-unit
CORRUPT_FILE = "2020-40_zh_head_0001.jsonl"
CORRUPT_LINE = 6
SETTLE_S = 300


def drill_preset(folder: Path, model: Path) -> Path:
    """The tiny-model chain over two SkyPile files; line 6 of the second is cut in half (invalid JSON)."""
    preset = write_preset(
        folder,
        model,
        "transformers",
        RECORDS_PER_FILE,
        shard={"records_per_shard": 12},
        pipeline={"chunk_records": CHUNK, "shards_per_task": 1},
        label={"sampling": {"max_new_tokens": 32}},
        executor={"poll_interval_s": 1},
    )
    lines = _sample_lines(2 * RECORDS_PER_FILE)[RECORDS_PER_FILE:]
    cut = lines[CORRUPT_LINE - 1]
    lines[CORRUPT_LINE - 1] = cut[: len(cut) // 2].decode("utf-8", "ignore").encode()  # a truncated write
    (folder / "skypile" / CORRUPT_FILE).write_bytes(b"\n".join(lines) + b"\n")
    return preset


def check_quarantine(run: Path) -> None:
    """The corrupted line is quarantined once, with its file, position and reason, and counted."""
    root = run / "shards" / "skypile"
    manifest = read_manifest(root)
    assert manifest["quarantined"] == {"invalid_json": 1}
    assert manifest["read"] == 2 * RECORDS_PER_FILE == manifest["records"] + 1
    (bad,) = [r for p in sorted((root / "quarantine").glob("*.jsonl.zst")) for r in read_shard(p)]
    assert (bad["source"], bad["position"], bad["reason"]) == (
        CORRUPT_FILE,
        f"line {CORRUPT_LINE}",
        "invalid_json",
    )
    markers = [orjson.loads(p.read_bytes()) for p in (run / "done" / "label").glob("*.json")]
    assert sum(m["in"] for m in markers) == manifest["records"]  # the shards are the first stage's input


def dataset_rows(run: Path) -> list[dict]:
    """The merged dataset, sorted by id. ``prov`` keeps every stage's model, backend, sampling and template
    hash; only each stage's ``config_hash`` is dropped: it covers the shard settings, whose paths name the
    run directory, so it differs between any two run folders by design."""
    rows = [r for p in list_shards(run / "merge" / "dataset" / "jsonl") for r in read_shard(p)]
    for r in rows:
        prov = orjson.loads(r["prov"])
        for entry in prov.values():
            entry.pop("config_hash")
        r["prov"] = prov
    return sorted(rows, key=lambda r: r["id"])


def funnel(run: Path) -> list[dict]:
    return orjson.loads((run / "merge" / "report" / "report.json").read_bytes())["funnel"]


# ---------------------------------------------------------------------------------------------- faults
@dataclass
class Drill:
    """Faults sent to this run's array tasks: unit -> (task, chunks committed when it was hit)."""

    run: Path
    rng: random.Random
    killed: dict[str, tuple[str, int]] = field(default_factory=dict)
    requeued: dict[str, tuple[str, int]] = field(default_factory=dict)
    seen: dict[str, list[str]] = field(default_factory=dict)  # unit -> the states status showed, in order

    def tasks(self) -> dict[str, tuple[str, str]]:
        """task id -> (stage, unit) of every array task of the run's first submission."""
        entries = read_registry(self.run)
        return {t: (e["stage"], u) for e in entries for t, u in zip(e["tasks"], e["units"], strict=True)}

    def hit_groups(self) -> set[str]:
        return {u.rsplit("-", 1)[1] for u in (*self.killed, *self.requeued)}

    def candidates(self, stages: tuple[str, ...], min_chunks: int) -> list[tuple[str, str, int]]:
        """(task, unit, committed chunks) of running tasks of ``stages`` mid-unit: at least ``min_chunks``
        committed and some left, in a group not hit yet."""
        grid = plan_grid(self.cfg)
        units = {u.name: u for s in stages for u in grid.units[s]}
        tasks = self.tasks()
        out = []
        for task in squeue("RUNNING"):
            stage, name = tasks.get(task, ("", ""))
            unit = units.get(name)
            if unit is None or name.rsplit("-", 1)[1] in self.hit_groups():
                continue
            n = len(committed_chunks(unit.shards[0].output))
            total = -(-count_lines(unit.shards[0].input) // CHUNK)
            if min_chunks <= n < total and read_marker(unit.run_dir, stage, name) is None:
                out.append((task, name, n))
        return sorted(out)

    @cached_property
    def cfg(self) -> DictConfig:
        return config.load(str(self.run / "config.yaml"))

    def hit(self, action: str, stages: tuple[str, ...], min_chunks: int) -> bool:
        found = self.candidates(stages, min_chunks)
        if not found:
            return False
        task, unit, chunks = self.rng.choice(found)
        if action == "kill":
            # paused first, then looked at again: on a loaded machine a unit picked on its last chunk may
            # have written its marker since it was picked
            pids = [pid for pid in worker_pids(task) if signalled(pid, signal.SIGSTOP)]
            if not pids:
                return False
            stage = unit.rsplit("-", 1)[0]
            (picked,) = [u for u in plan_grid(self.cfg).units[stage] if u.name == unit]
            if read_marker(picked.run_dir, stage, unit) is not None:
                for pid in pids:
                    signalled(pid, signal.SIGCONT)
                return False
            chunks = len(committed_chunks(picked.shards[0].output))
            if not [pid for pid in pids if signalled(pid, signal.SIGKILL)]:
                return False
            self.killed[unit] = (task, chunks)
        else:
            if subprocess.run(["scontrol", "requeue", task], capture_output=True).returncode != 0:
                return False  # it ended in between
            self.requeued[unit] = (task, chunks)
        return True

    def look(self) -> list[UnitStatus]:
        """What ``kun-hpc status`` would say now, kept when it changes; the rows it read."""
        rows = unit_statuses(self.cfg)
        for r in rows:
            states = self.seen.setdefault(r.unit, [])
            if not states or states[-1] != r.state:
                states.append(r.state)
        return rows

    def run_faults(self) -> None:
        """One kill and one requeue of Label units (the longest) once a chunk is committed, in random order;
        then, best effort, one of each on a later stage of the other groups. Returns when the run's tasks
        have all left the queue."""
        plan = [("kill", ("label",), 1), ("requeue", ("label",), 1)]
        self.rng.shuffle(plan)
        later = [("kill", ("point", "answer"), 0), ("requeue", ("point", "answer"), 0)]
        self.rng.shuffle(later)
        plan += later
        deadline = time.time() + SETTLE_S
        mine = set(self.tasks())
        looked = 0.0
        while time.time() < deadline:
            if plan and self.hit(*plan[0]):
                plan.pop(0)
            if time.time() - looked > 1:
                self.look()
                looked = time.time()
            if not mine & set(squeue()):
                self.look()
                return
            time.sleep(0.05 if plan else 0.5)
        raise AssertionError(f"the drill's jobs did not settle in {SETTLE_S}s")


def squeue(*states: str, fmt: str = "%i") -> list[str]:
    """Job ids in the queue (array tasks one by one; ``fmt``: squeue's format of each, without spaces);
    retried while the controller does not answer, so that a failed call is never read as an empty queue."""
    args = ["squeue", "-h", "-r", "-o", fmt] + (["-t", ",".join(states)] if states else [])
    for _ in range(60):
        out = subprocess.run(args, capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split()
        time.sleep(1)
    raise AssertionError(f"squeue kept failing: {out.stderr}")


def count_lines(path: str) -> int:
    return sum(1 for _ in read_shard(path))


def worker_pids(task: str) -> list[int]:
    """The submitit worker (the Python process srun started) of an array task, found through its Slurm
    environment: on this single-node cluster it runs here."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and _array_task(proc.name) == task:
            pids.append(int(proc.name))
    return pids


# ------------------------------------------------------------------------------------------------ test
@pytest.fixture(scope="module")
def cluster():
    start_sandbox()


@pytest.mark.slurm
def test_fault_drill_ends_with_the_clean_runs_dataset(
    cluster, chain_preset, clean_chain_run, tmp_path, capsys
):
    preset, clean = chain_preset, clean_chain_run  # the chain run inline (tests/cluster/conftest.py)
    check_quarantine(clean)

    run = tmp_path / "drill"
    args = [str(preset), f"run.dir={run}", *GREEDY, *SLURM_RUN_ARGS]
    assert cli.main(["run", *args]) == 0  # shards, submits the chained arrays, returns
    drill = Drill(run, random.Random(SEED))
    drill.run_faults()
    cfg = config.load(str(preset), args[1:])
    rows = {r.unit: r for r in unit_statuses(cfg)}
    with capsys.disabled():
        print(f"\ndrill: killed {drill.killed}, requeued {drill.requeued}\nstatus seen: {drill.seen}")

    # requeued units came back by themselves, with the restart in their marker and resumed at a chunk
    restarted = {}
    for unit, (_, chunks) in drill.requeued.items():
        marker = read_marker(run, unit.rsplit("-", 1)[0], unit)
        assert marker is not None and rows[unit].state == "done", rows[unit]
        if marker["restarts"] >= 1:
            restarted[unit] = marker
            assert marker["shards"][0]["resumed_at_chunk"] >= chunks
        else:  # the unit finished within KillWait, before SIGKILL: requeued after its marker was written
            assert marker["shards"][0]["resumed_at_chunk"] == 0
    assert restarted, f"no requeue interrupted a unit: {drill.requeued}"

    # killed units failed, the rest of their chain was cancelled, everything else is done; status and logs
    # say so now, and status never showed a unit failed or cancelled before its final state
    assert any(chunks >= 1 for _, chunks in drill.killed.values()), f"no kill after a commit: {drill.killed}"
    grid = plan_grid(cfg)
    expected = {u.name: "done" for s in grid.stages for u in grid.units[s]}
    for unit in drill.killed:
        stage, group = unit.rsplit("-", 1)
        expected[unit] = "failed"
        for later in grid.stages[grid.stages.index(stage) + 1 :]:
            expected[f"{later}-{group}"] = "cancelled"
    assert {u: r.state for u, r in rows.items()} == expected
    for unit, states in drill.seen.items():
        assert not {"failed", "cancelled"} & set(states[:-1]), (unit, states)
    capsys.readouterr()
    assert cli.main(["status", *args]) == 0
    status = capsys.readouterr().out
    assert cli.main(["logs", *args]) == 0
    logs = capsys.readouterr().out
    for unit, (task, _) in drill.killed.items():
        assert rows[unit].job == task, rows[unit]
        assert f"{unit}: failed (job {task})" in status, status
        assert f"==> {unit} (job {task}, " in logs, logs
        assert Path(rows[unit].log).read_text(errors="replace").strip().splitlines()[-1] in logs
    for unit, state in expected.items():
        if state == "cancelled":
            why = rows[unit].why
            assert why.startswith("upstream ") and why.split()[1] in drill.killed, rows[unit]
            assert f"{unit}: cancelled (job {rows[unit].job}) {why}" in status, status
    assert logs.count("==> ") == len(drill.killed)
    # the merge job submitted with the arrays could never start (afterok): Slurm cancelled it
    assert merge_job_state(run)[1] == "CANCELLED" and not (run / "merge").exists()

    # re-run until done (each round resumes the failed units at their last chunk and re-submits the rest)
    for _ in range(3):
        if cli.main(["run", "--wait", *args]) == 0:
            break
    else:
        raise AssertionError("the drill did not complete in 3 re-runs")
    for unit, (_, chunks) in drill.killed.items():
        marker = read_marker(run, unit.rsplit("-", 1)[0], unit)
        assert marker["shards"][0]["resumed_at_chunk"] >= chunks, marker

    assert check_accounting(run, CHAIN) == check_accounting(clean, CHAIN)
    check_quarantine(run)
    assert dataset_rows(run) == dataset_rows(clean)
    assert dataset_rows(clean), "the clean run kept no record: the comparison would prove nothing"
    assert funnel(run) == funnel(clean)
    assert funnel(run)[0]["quarantined"] == {"invalid_json": 1}  # counted once, at the shard step


def test_a_kill_while_the_chunks_are_deleted_cannot_truncate_the_shard(tmp_path, monkeypatch):
    """A unit killed after writing its shard, while deleting its chunk folder, must not resume from the
    chunks that are left: their commit points would stand for records whose files are gone. Found by the
    drill's review of run_shard_task; the kill is emulated by an rmtree that dies after one file."""
    args = sample_overrides(
        tmp_path / "run",
        "executor.kind=inline",
        "shard.records_per_shard=2000",
        "pipeline.stages=[tests.stages_for_tests:Tag]",
        "pipeline.chunk_records=100",
    )
    assert cli.main(["shard", *args]) == 0
    (unit,) = [u for u in plan_grid(config.load(None, args)).units["tag"] if "/skypile/" in u.shards[0].input]
    shard = unit.shards[0]  # the SkyPile sample: 1004 records in one shard, 11 chunks

    rmtree = shutil.rmtree

    def killed_mid_delete(path, *a, **kw):
        victim = Path(path) / "chunk-00003.out.zst"
        if not victim.exists():
            return rmtree(path, *a, **kw)
        victim.unlink()  # one file gone, then the process dies
        raise SystemExit("killed")

    with monkeypatch.context() as m:
        m.setattr(base.shutil, "rmtree", killed_mid_delete)
        with pytest.raises(SystemExit):
            run_unit(unit)
    marker = run_unit(unit)
    kept = sum(1 for _ in read_shard(shard.output))
    rejected = sum(1 for _ in read_shard(shard.rejected))
    assert (marker["out"], sum(marker["rejected"].values())) == (kept, rejected)
    assert kept + rejected == marker["in"] == 1004
    assert marker["shards"][0]["resumed_at_chunk"] == 0  # no chunk folder: redone from the first line
    assert not list(Path(shard.output).parent.glob("*.chunks*"))
