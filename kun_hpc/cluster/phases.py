"""Global phases: all-to-all steps (dedup) on top of the per-unit executors.

The grid (:mod:`kun_hpc.cluster.grid`) only knows chains: shard i of stage k+1 comes from shard i of stage k.
A dedup needs barriers instead: every shard's signatures before any bucket task, every bucket task before
the one union-find, the removal lists before the per-shard apply. A :class:`Phase` is one such step: a list
of :class:`PhaseUnit` run as one array (``executor.map``, which on Slurm submits arrays through
``map_array`` and waits), each unit committing ``<run>/done/<phase>/<unit>.json`` when it is done. Phases run
in order; a phase starts only when every unit of the one before has a valid marker. Re-running skips units
whose marker holds the same config hash, so an interrupted dedup resumes at the first unfinished phase.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kun_hpc.cluster.executors import Executor, OnDone, failure_line
from kun_hpc.cluster.progress import stage_bars
from kun_hpc.core.counts import Counts
from kun_hpc.core.unit_log import UnitLog, counts_text, files_text
from kun_hpc.io.lock import one_attempt
from kun_hpc.io.markers import read_marker, runtime_fields, valid_marker, write_marker


@dataclass(frozen=True)
class PhaseUnit:
    """One task of a phase: ``fn`` (``module:function``) called with ``args`` (picklable)."""

    phase: str
    index: int
    fn: str
    args: Any
    run_dir: str
    config_hash: str

    @property
    def unit(self) -> str:  # the name the Slurm job registry records
        return f"{self.phase}-{self.index:05d}"

    name = unit


@dataclass
class Phase:
    name: str
    units: list[PhaseUnit]


class PhaseFailed(RuntimeError):
    pass


def is_phase_done(u: PhaseUnit) -> bool:
    return valid_marker(u.run_dir, u.phase, u.name, u.config_hash) is not None


def run_phase_unit(u: PhaseUnit) -> dict:
    """Run one unit (unless its marker is valid) and commit its marker: the function's result plus where,
    when and under which config hash it ran. One attempt at a time, as a stage unit
    (:func:`kun_hpc.io.lock.one_attempt`)."""
    with one_attempt(u.run_dir, u.phase, u.name, u.config_hash):
        return _run_phase_unit(u)


def _run_phase_unit(u: PhaseUnit) -> dict:
    marker = valid_marker(u.run_dir, u.phase, u.name, u.config_hash)
    if marker is not None:
        return marker
    module, _, func = u.fn.partition(":")
    log = UnitLog(u.name)
    reads, writes = _paths(u)
    log.start(f"phase {u.phase}, {func}, reads {files_text(reads)} -> {writes}, config {u.config_hash}")
    started = log.started
    with log:
        result = getattr(importlib.import_module(module), func)(u.args)
    log.records, summary = _result_text(result)
    log.end(summary)
    marker = {
        "unit": u.name,
        "phase": u.phase,
        "config_hash": u.config_hash,
        **result,
        **runtime_fields(started),
    }
    write_marker(u.run_dir, u.phase, u.name, marker)
    return marker


def _paths(u: PhaseUnit) -> tuple[list[str], str]:
    """What a phase unit reads and where it writes, for its log: a task with ``inputs`` and ``out`` or
    ``outputs`` (assemble, decontaminate), or a dedup's ``(job, shards or partition)``: the apply step
    writes the job's outputs, the others its work folder (phases know no task type: they sit below them)."""
    args = u.args
    if isinstance(args, tuple) and len(args) == 2 and hasattr(args[0], "work"):
        job, part = args
        shards = part if isinstance(part, list) else []
        reads = [job.inputs[i] for i in shards] or [job.work]
        if u.phase.endswith(".apply"):
            return reads, files_text([job.outputs[i] for i in shards])
        return reads, job.work
    outputs = getattr(args, "out", None) or files_text(list(getattr(args, "outputs", ())))
    return list(getattr(args, "inputs", ())), outputs


def _result_text(result: dict) -> tuple[int, str]:
    """(records the unit processed, its counts as text) from a phase function's result: the records'
    counts where it has them (``in``/``out``/...: dedup apply, decontaminate), else its numbers (``rows``,
    a dedup step's ``counts`` or pair numbers)."""
    if {"in", "out", "rejected", "quarantined"} <= result.keys():
        counts = Counts.from_dict(result)
        return counts.in_, counts_text(counts)
    numbers = {k: v for k, v in {**result, **result.get("counts", {})}.items() if type(v) is int}
    records = numbers.get("in", numbers.get("rows", 0))
    return records, " ".join(f"{k} {v}" for k, v in numbers.items()) or "nothing counted"


def run_phases(phases: Sequence[Phase], executor: Executor, log_root: Path) -> list[list[dict]]:
    """Run the phases in order, each as one array of its pending units; the markers of every phase.

    Raises :class:`PhaseFailed` naming the failed units (and their logs) at the first phase that failed.
    """
    out = []
    todos = [[u for u in phase.units if not is_phase_done(u)] for phase in phases]
    # Slurm waits are followed by `run --wait` / `status --watch`, not by these bars
    bars_on = not executor.detached
    with stage_bars({p.name: len(t) for p, t in zip(phases, todos, strict=True)}, bars_on) as bars:
        for phase, todo in zip(phases, todos, strict=True):
            out.append(_run_phase(phase, todo, executor, log_root, bars.done))
    return out


def _run_phase(
    phase: Phase, todo: list[PhaseUnit], executor: Executor, log_root: Path, on_done: OnDone
) -> list[dict]:
    if todo:
        outcomes = executor.map(
            run_phase_unit, todo, name=phase.name, log_dir=log_root / phase.name, on_done=on_done
        )
        failed = [o for o in outcomes if not o.ok]
        if failed:
            lines = [f"  {failure_line(o)}" for o in failed]
            raise PhaseFailed(
                f"phase {phase.name}: {len(failed)} of {len(todo)} units failed; the phases after it "
                "did not run (run again to resume):\n" + "\n".join(lines)
            )
    return [read_marker(u.run_dir, u.phase, u.name) for u in phase.units]


def phase_markers(run_dir: str | Path, name: str) -> list[dict]:
    """The markers of global phase ``name`` and its steps (``done/<name>/`` and ``done/<name>.<step>/``), of
    each folder those of its latest run: sharing the config hash of its newest marker (an earlier, larger
    run may have left markers of units this one has not)."""
    done = Path(run_dir) / "done"
    out = []
    for folder in [done / name, *sorted(done.glob(f"{name}.*"))]:
        markers = [orjson.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]
        if markers:
            newest = max(markers, key=lambda m: m["timings"]["end"])["config_hash"]
            out += [m for m in markers if m["config_hash"] == newest]
    return out
