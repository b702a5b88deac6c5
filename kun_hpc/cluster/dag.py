"""Run the grid as chains: unit g of stage k+1 runs after unit g of stage k, on any executor.

Only pending units are submitted (:func:`kun_hpc.cluster.grid.pending_units`); a unit whose upstream unit is
already done waits for nothing. The executor honours the order (on Slurm, ``aftercorr`` arrays submitted at
once; inline and local, a unit starts when its upstream ended) and never runs a unit whose upstream failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from submitit.core.utils import FailedJobError, FailedSubmissionError

from kun_hpc.cluster.executors import Executor, Outcome, Task, failure_line
from kun_hpc.cluster.grid import Grid, pending_units
from kun_hpc.cluster.progress import stage_bars
from kun_hpc.cluster.rates import stage_progress
from kun_hpc.cluster.status import record_local_outcome
from kun_hpc.stages.runner import run_unit


@dataclass
class Submitted:
    """What :func:`submit_grid` handed over, and (after :func:`wait_grid`) how it ended."""

    pending: dict[str, int]
    tasks: dict[str, list[Task]] = field(default_factory=dict)  # stage -> one task per pending unit
    failed: dict[str, list[str]] = field(default_factory=dict)  # units that failed ("unit: why (log)")
    skipped: dict[str, list[str]] = field(default_factory=dict)  # not run: an upstream unit failed
    grid: Grid | None = None  # what was submitted from (the bars' records done, rate and ETA)

    @property
    def all_tasks(self) -> list[Task]:
        return [t for ts in self.tasks.values() for t in ts]

    @property
    def jobs(self) -> list[str]:
        """The scheduler's array jobs submitted, in order (empty off Slurm)."""
        return list(dict.fromkeys(t.array for t in self.all_tasks if t.array))


def submit_grid(grid: Grid, executor: Executor, log_root: Path, after: Sequence[Task] = ()) -> Submitted:
    """Hand every pending unit to the executor, each after its upstream unit of the same group; a unit whose
    upstream unit is done already waits for ``after`` instead (on Slurm ``afterok``: the training job of a
    ``kun-hpc iterate`` round, whose model the stages load)."""
    pending = pending_units(grid)
    result = Submitted({s: len(u) for s, u in pending.items()}, grid=grid)
    previous: dict[int, Task] = {}  # group -> the task of the stage before
    first = list(after) or None
    try:
        for stage in grid.stages:
            units = pending[stage]
            waits = [previous.get(u.index) or first for u in units]
            tasks = executor.submit(run_unit, units, name=stage, log_dir=log_root / stage, after=waits)
            result.tasks[stage] = tasks
            previous = {u.index: t for u, t in zip(units, tasks, strict=True)}
    except (FailedJobError, FailedSubmissionError) as e:
        jobs = " ".join(result.jobs) or "none"
        raise RuntimeError(
            f"sbatch failed after {len(result.jobs)} arrays were submitted (jobs {jobs}): they stay "
            f"queued; let them run or kun-hpc cancel, then run again to submit the rest.\n{e}"
        ) from None
    return result


def wait_grid(result: Submitted, executor: Executor, run_dir: Path) -> Submitted:
    """Wait for every submitted unit with a bar per stage; keep each failure's error where ``status`` finds
    it (:func:`~kun_hpc.cluster.status.record_local_outcome`), and list failed and skipped units."""
    grid = result.grid
    records = (lambda: {s: p.summary() for s, p in stage_progress(grid).items()}) if grid else None
    with stage_bars({s: len(ts) for s, ts in result.tasks.items()}, not executor.detached, records) as bars:
        executor.wait(result.all_tasks, _recording(run_dir, bars.done))
    for stage, tasks in result.tasks.items():
        outcomes = [t.outcome for t in tasks if t.outcome is not None]
        result.skipped[stage] = [o.unit.name for o in outcomes if o.skipped]
        result.failed[stage] = [failure_line(o) for o in outcomes if not o.ok and not o.skipped]
    return result


def _recording(run_dir: Path, then: Callable[[Outcome], None]) -> Callable[[Outcome], None]:
    def done(o: Outcome) -> None:
        if not o.skipped:
            record_local_outcome(run_dir, o.name, o.unit.name, None if o.ok else o.error, o.log or "")
        then(o)

    return done
