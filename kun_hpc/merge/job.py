"""The merge as a Slurm job of its own, so that ``kun-hpc run`` can submit a whole run and return.

``kun-hpc run`` (Slurm, without ``--wait``, ``merge.auto``) submits one small driver job after the run's
arrays, with ``--dependency=afterok:<every array it submitted>``: it starts once every unit succeeded, and
Slurm cancels it (``--kill-on-invalid-dep=yes``) as soon as one fails; running ``kun-hpc run`` again then
re-submits what failed and a new merge job. The driver loads the run's saved config and runs the same
:func:`~kun_hpc.merge.run.run_merge` as ``kun-hpc merge``: its phases are arrays of their own, submitted
from inside the job (with submitit's ``clean_env``, so they do not inherit the driver's allocation).

The driver is requeued like any unit (timeout, preemption). A restarted driver first waits for the phase
arrays its earlier attempt left in the queue, then resumes at the phase markers, so no phase unit runs twice
at once. Its resources are ``executor.stage_resources.merge`` over ``executor.slurm``; its ``time_min`` need
not cover the whole merge (each requeue resumes), but each attempt should outlast a phase.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

MERGE_STAGE = "merge"  # the driver's name in the run's job registry and its resources key


@dataclass(frozen=True)
class MergeJob:
    run_dir: str
    unit: str = MERGE_STAGE  # the registry's unit name


def run_merge_job(job: MergeJob) -> dict:
    """What the driver runs (in a Slurm job)."""
    from kun_hpc import config
    from kun_hpc.cluster.executors import make_executor
    from kun_hpc.cluster.status import SchedulerView, queued_tasks, wait_for_jobs
    from kun_hpc.merge.run import run_merge

    cfg = config.load(str(Path(job.run_dir) / "config.yaml"))
    view = SchedulerView(cfg.executor.poll_interval_s)
    queued = queued_tasks(Path(job.run_dir), view)
    left = {t for t, (stage, _) in queued.items() if stage != MERGE_STAGE}
    if left:  # an earlier attempt of this driver was requeued while its phase arrays ran
        wait_for_jobs(view, left)
    result = run_merge(cfg, make_executor(cfg))
    print(f"merge job: {result.summary()}")
    return {"dataset": str(result.dataset), "rows": result.rows, "job": os.environ.get("SLURM_JOB_ID", "")}


def submit_merge_job(cfg: DictConfig, executor, after: list[str]) -> str:
    """Submit the driver after the arrays ``after`` (afterok); returns its job id."""
    dependency = "afterok:" + ":".join(after) if after else None
    entries = executor.submit(
        run_merge_job,
        [MergeJob(str(cfg.run.dir))],
        stage=MERGE_STAGE,
        log_dir=Path(cfg.run.dir) / "logs" / MERGE_STAGE,
        dependencies=[dependency],
    )
    return entries[0]["job"]


def merge_tasks(run_dir: Path) -> list[str]:
    """Every merge driver job the run ever submitted."""
    from kun_hpc.cluster.slurm import read_registry

    return [t for e in read_registry(run_dir) if e["stage"] == MERGE_STAGE for t in e["tasks"]]
