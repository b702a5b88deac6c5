"""Run the grid: on Slurm as chained arrays, locally stage by stage. Only pending units run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from submitit.core.utils import FailedJobError, FailedSubmissionError

from kun_hpc.cluster.executors import Executor
from kun_hpc.cluster.grid import Grid, pending_units
from kun_hpc.cluster.progress import stage_bars
from kun_hpc.cluster.slurm import SlurmExecutor
from kun_hpc.cluster.status import record_local_outcome
from kun_hpc.stages.base import Unit, run_unit


@dataclass
class Submitted:
    pending: dict[str, int]
    entries: list[dict] = field(default_factory=list)  # slurm: one per sbatch call
    failed: dict[str, list[str]] = field(default_factory=dict)  # local: units that failed
    skipped: dict[str, list[str]] = field(default_factory=dict)  # local: not run, upstream failed

    @property
    def sbatch_calls(self) -> int:
        return len(self.entries)


def run_grid(cfg: DictConfig, grid: Grid, executor: Executor) -> Submitted:
    pending = pending_units(grid)
    result = Submitted({s: len(u) for s, u in pending.items()})
    log_root = Path(cfg.run.dir) / "logs"
    if isinstance(executor, SlurmExecutor):
        try:
            _submit_chains(grid, pending, executor, log_root, result)
        except (FailedJobError, FailedSubmissionError) as e:
            jobs = " ".join(e["job"] for e in result.entries) or "none"
            raise RuntimeError(
                f"sbatch failed after {len(result.entries)} arrays were submitted (jobs {jobs}): they stay "
                f"queued; let them run or kun-hpc cancel, then run again to submit the rest.\n{e}"
            ) from None
    else:
        _run_stagewise(grid, pending, executor, log_root, result)
    return result


def _submit_chains(
    grid: Grid, pending: dict[str, list[Unit]], ex: SlurmExecutor, log_root: Path, result: Submitted
) -> None:
    """Stage k+1's array chunk c depends (aftercorr) on stage k's chunk c, holding the same groups in the
    same order. Units whose upstream is already done go in arrays of their own, without dependency."""
    previous: list[dict] = []  # registry entries of the previous stage, chained ones first
    prev_groups: list[list[int]] = []
    for stage in grid.stages:
        units = {u.index: u for u in pending[stage]}
        entries: list[dict] = []
        groups: list[list[int]] = []
        chained: set[int] = set()
        for entry, idxs in zip(previous, prev_groups, strict=True):
            chunk = [units[i] for i in idxs]  # pending(k+1) contains pending(k), group by group
            chained.update(idxs)
            # the previous chunk has at most MaxArraySize tasks, so this submits exactly one array
            new = ex.submit(
                run_unit,
                chunk,
                stage=stage,
                log_dir=log_root / stage,
                dependencies=[f"aftercorr:{entry['job']}"],
            )
            entries += new
            result.entries += new
            groups.append(idxs)
        free = [u for i, u in sorted(units.items()) if i not in chained]
        if free:
            new = ex.submit(run_unit, free, stage=stage, log_dir=log_root / stage)
            entries += new
            result.entries += new
            start = 0
            for e in new:
                groups.append([u.index for u in free[start : start + len(e["units"])]])
                start += len(e["units"])
        previous, prev_groups = entries, groups


def _run_stagewise(
    grid: Grid, pending: dict[str, list[Unit]], ex: Executor, log_root: Path, result: Submitted
) -> None:
    broken: set[int] = set()  # groups whose chain failed at some stage
    run_dir = log_root.parent
    with stage_bars({s: len(pending[s]) for s in grid.stages}) as bars:
        for stage in grid.stages:
            todo = [u for u in pending[stage] if u.index not in broken]
            result.skipped[stage] = [u.name for u in pending[stage] if u.index in broken]
            bars.skip(stage, len(result.skipped[stage]), "upstream failed")
            outcomes = ex.map(
                run_unit, todo, name=stage, log_dir=log_root / stage, on_done=bars.on_done(stage)
            )
            result.failed[stage] = []
            for o in outcomes:
                record_local_outcome(run_dir, stage, o.unit.name, None if o.ok else o.error, o.log or "")
                if not o.ok:
                    broken.add(o.unit.index)
                    result.failed[stage].append(
                        f"{o.unit.name}: {o.error.strip().splitlines()[0] if o.error else ''}"
                        + (f" (log: {o.log})" if o.log else "")
                    )
