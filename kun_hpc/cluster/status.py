"""What is done, running, pending or failed: completion markers first, then the scheduler
(:mod:`kun_hpc.cluster.scheduler`: one ``squeue`` and one ``sacct`` call per refresh, whatever the number of
units); local and inline runs keep each failed unit's error in ``<run>/failed/``, and the units a local run
is running are read from ``<run>/running/`` (issue 16). A failure is shown by its exception
(``Type: message``), a Slurm one too when its result holds it. A unit Slurm requeued (its node failed, it
was preempted or requeued) is pending or running again, never failed, and says why it restarted; ``logs``
names each such loss (:func:`requeue_lines`), from one ``sacct -D`` call for the whole run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import submitit
from omegaconf import DictConfig
from rich.table import Table

from kun_hpc.cluster.executors import job_error
from kun_hpc.cluster.grid import is_done, plan_grid
from kun_hpc.cluster.rates import StageProgress
from kun_hpc.cluster.scheduler import (
    ACTIVE,
    Attempt,
    SchedulerView,
    local_running,
    lost_attempts,
    merge_tasks,
    read_registry,
    tail,
)
from kun_hpc.core.console import console as make_console
from kun_hpc.io.lock import holder


@dataclass
class UnitStatus:
    stage: str
    unit: str
    state: str  # done | running | pending | failed | cancelled | not submitted
    job: str = ""
    why: str = ""
    log: str = ""
    restarted: str = ""  # requeued by Slurm: ``restart 1 after the job lost node node2 (NODE_FAIL at T)``


LOCAL_FAILURES = "failed"  # <run>/failed/<stage>/<unit>.log


def local_failure_file(run_dir: Path, stage: str, unit: str) -> Path:
    """Where a local or inline run keeps a failed unit's error (no scheduler can be asked about it later)."""
    return Path(run_dir) / LOCAL_FAILURES / stage / f"{unit}.log"


def record_local_outcome(run_dir: Path, stage: str, unit: str, error: str | None, log: str = "") -> None:
    """Keep a failed unit's error (``log:`` line first when the unit has a log of its own), or drop the
    record once the unit succeeded."""
    path = local_failure_file(run_dir, stage, unit)
    if error is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((f"log: {log}\n" if log else "") + (error.strip() or "failed") + "\n")


def _local_failure(run_dir: Path, stage: str, unit: str, submitted: float) -> tuple[str, str] | None:
    """(why, log) of a local failure recorded after the unit's last Slurm submission, if any."""
    path = local_failure_file(run_dir, stage, unit)
    try:
        if path.stat().st_mtime < submitted:
            return None
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    log = lines[0].removeprefix("log: ") if lines and lines[0].startswith("log: ") else str(path)
    why = next((line for line in lines if not line.startswith("log: ")), "failed")
    return f"local run: {why}", log


def unit_statuses(cfg: DictConfig, view: SchedulerView | None = None) -> list[UnitStatus]:
    grid = plan_grid(cfg)
    run_dir = Path(cfg.run.dir)
    latest: dict[tuple[str, str], tuple[str, str]] = {}  # (stage, unit) -> (job, log_dir)
    submitted: dict[tuple[str, str], float] = {}
    # one listing, not a stat per unit: (stage, unit) of the local failure records
    recorded = {(p.parent.name, p.stem) for p in (run_dir / LOCAL_FAILURES).glob("*/*.log")}
    for e in read_registry(run_dir):
        for k, name in enumerate(e["units"]):
            latest[(e["stage"], name)] = (e["tasks"][k], e["log_dir"])
            submitted[(e["stage"], name)] = float(e.get("submitted", 0))
    todo = {
        latest[(s, u.name)][0]
        for s in grid.stages
        for u in grid.units[s]
        if (s, u.name) in latest and not is_done(u)
    }
    view = view or SchedulerView(0)
    states = view.states(todo) if todo else {}
    held = holder(run_dir)  # a command working in the run now, and the units it runs locally
    running = local_running(run_dir, held) if held else {}
    queued_locally = held is not None and cfg.executor.kind != "slurm" and held.command == "run"
    rows: list[UnitStatus] = []
    failed_groups: dict[int, str] = {}
    for stage in grid.stages:
        for u in grid.units[stage]:
            if is_done(u):
                rows.append(UnitStatus(stage, u.name, "done"))
                continue
            if (stage, u.name) in running:
                entry = running[(stage, u.name)]
                rows.append(UnitStatus(stage, u.name, "running", f"pid {entry['pid']}", "", entry["log"]))
                continue
            local = (
                _local_failure(run_dir, stage, u.name, submitted.get((stage, u.name), 0.0))
                if (stage, u.name) in recorded
                else None
            )
            if local:
                failed_groups.setdefault(u.index, u.name)
                rows.append(UnitStatus(stage, u.name, "failed", "", *local))
                continue
            if (stage, u.name) not in latest:
                if u.index in failed_groups:  # a local run skips what comes after a failed unit
                    why = f"not run: upstream {failed_groups[u.index]} failed"
                    rows.append(UnitStatus(stage, u.name, "cancelled", "", why))
                elif queued_locally:
                    rows.append(UnitStatus(stage, u.name, "pending", "", f"queued in {held.describe()}"))
                else:
                    rows.append(UnitStatus(stage, u.name, "not submitted"))
                continue
            job, log_dir = latest[(stage, u.name)]
            state, reason = states.get(job, ("UNKNOWN", ""))
            log = _log_path(log_dir, job)
            restarted = _restarted(view.lost(job), view.restarts(job))
            if state in ("RUNNING", "COMPLETING", "CONFIGURING"):
                rows.append(UnitStatus(stage, u.name, "running", job, "", log, restarted))
            elif state in ACTIVE:
                why = "" if reason == "None" else reason  # squeue's "no reason" (a task just requeued)
                if reason == "DependencyNeverSatisfied" and u.index in failed_groups:
                    why = f"waits on {failed_groups[u.index]}, which failed: will be cancelled"
                rows.append(UnitStatus(stage, u.name, "pending", job, why, log, restarted))
            elif state == "CANCELLED" and u.index in failed_groups:
                rows.append(
                    UnitStatus(
                        stage, u.name, "cancelled", job, f"upstream {failed_groups[u.index]} failed", log
                    )
                )
            elif state == "COMPLETED":
                rows.append(UnitStatus(stage, u.name, "failed", job, "job completed but left no marker", log))
            else:
                failed_groups.setdefault(u.index, u.name)
                why = f"{state} {reason}".strip()
                error = job_error(_job(log_dir, job).paths.result_pickle) if state != "CANCELLED" else ""
                rows.append(
                    UnitStatus(
                        stage,
                        u.name,
                        "failed" if state != "CANCELLED" else "cancelled",
                        job,
                        f"{why}: {error.splitlines()[0]}" if error else why,
                        log,
                    )
                )
    return rows


def _restarted(lost: list[Attempt], restarts: int) -> str:
    """Why a queued unit runs again: its restart count (squeue's) and what ended its last lost attempt (the
    attempt's sacct row may come a few seconds after the count)."""
    n = restarts or len(lost)
    if not n:
        return ""
    return f"restart {n} after the job {lost[-1].event()}" if lost else f"restart {n}, requeued by Slurm"


def requeue_lines(run_dir: Path, view: SchedulerView | None = None) -> list[str]:
    """One line per attempt of the run's Slurm jobs that ended in a requeue, in submission order:
    ``label-00002: job 12_3 lost node node2 (NODE_FAIL at 2026-12-01T07:52:12), requeued by Slurm, restart 1``
    (one ``squeue`` and one ``sacct -D`` call over every array of the run; none without a registry). When
    Slurm cannot be asked, one line saying so."""
    units = {t: u for e in read_registry(Path(run_dir)) for t, u in zip(e["tasks"], e["units"], strict=True)}
    if not units:
        return []
    view = view or SchedulerView(0)
    try:
        queued = view.queued()
    except RuntimeError as e:
        return [f"cannot list them: {e}"]
    history = view.history(set(units))
    lines = []
    for task, unit in units.items():
        attempts = history.get(task, [])
        lost = set(lost_attempts(attempts, task in queued))
        for k, attempt in enumerate(attempts, 1):
            if attempt in lost:
                lines.append(f"{unit}: job {task} {attempt.event()}, requeued by Slurm, restart {k}")
    return lines


def _job(log_dir: str, job: str) -> submitit.SlurmJob:
    return submitit.SlurmJob(folder=log_dir, job_id=job)


def _log_path(log_dir: str, job: str) -> str:
    return str(_job(log_dir, job).paths.stderr)


def merge_job_state(run_dir: Path, view: SchedulerView | None = None) -> tuple[str, str, str] | None:
    """(job, state, reason) of the run's latest merge job (:func:`kun_hpc.run.submit_merge_job`), if any."""
    tasks = merge_tasks(Path(run_dir))
    if not tasks:
        return None
    job = tasks[-1]
    try:  # forced: the view's cached states are those of the jobs asked for last
        state, reason = (view or SchedulerView(0)).states({job}, force=True).get(job, ("UNKNOWN", ""))
    except RuntimeError as e:  # Slurm cannot be asked (squeue failed): unknown, and why
        state, reason = "UNKNOWN", str(e)
    return job, state, reason


def summarize(rows: list[UnitStatus]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for r in rows:
        out.setdefault(r.stage, Counter())[r.state] += 1
    return out


def with_activity(progress: Mapping[str, StageProgress], rows: list[UnitStatus]) -> dict[str, StageProgress]:
    """``progress`` with each stage's ``running`` set from the units' states (issue 16): a stage runs while
    a unit of it is running or queued (local: by the command that holds the run; Slurm: in the queue), not
    when its only queued units wait on a failed one (Slurm cancels them)."""
    active = {
        r.stage
        for r in rows
        if r.state == "running" or (r.state == "pending" and not r.why.startswith("waits on"))
    }
    return {stage: replace(p, running=stage in active) for stage, p in progress.items()}


def print_status(
    rows: list[UnitStatus], console=None, progress: Mapping[str, StageProgress] | None = None
) -> None:
    """The status table (units per state per stage; with ``progress``, :func:`kun_hpc.cluster.rates.
    stage_progress`, also records done/total, records/s and ETA per stage; no ETA for a stage no unit of which
    runs or is queued: :func:`with_activity`), then a line per unit that
    failed, was cancelled or waits on a failed one, or runs again after Slurm requeued it."""
    console = console or make_console()
    table = Table(title="kun-hpc status")
    states = ["done", "running", "pending", "failed", "cancelled", "not submitted"]
    table.add_column("stage")
    for s in states:
        table.add_column(s, justify="right")
    for col in ("records done/total", "records/s", "ETA") if progress else ():
        table.add_column(col, justify="right")
    progress = with_activity(progress, rows) if progress else progress
    for stage, counts in summarize(rows).items():
        p = progress.get(stage) if progress else None
        records = [p.records_text(), p.rate_text(), p.eta_text()] if p else ["?"] * 3 if progress else []
        table.add_row(stage, *[str(counts.get(s, 0)) for s in states], *records)
    console.print(table)
    for r in rows:
        waits = r.state == "pending" and r.why.startswith("waits on")
        if r.state in ("failed", "cancelled") or waits or r.restarted:
            why = "; ".join(w for w in (r.why, r.restarted) if w)
            console.print(f"  {r.unit}: {r.state}{f' (job {r.job})' if r.job else ''} {why}")


def failed_logs(rows: list[UnitStatus], n: int = 20) -> str:
    parts = []
    for r in rows:
        if r.state == "failed":
            job = f"job {r.job}, " if r.job else ""
            parts.append(f"==> {r.unit} ({job}{r.why}) {r.log}\n{tail(r.log, n)}")
    return "\n\n".join(parts) if parts else "no failed units"
