"""What is done, running, pending or failed: completion markers first, then the scheduler.

The scheduler is asked at most once per ``poll_interval_s``, with one ``squeue`` call for all of the
user's jobs and one ``sacct`` call for every job that left the queue without a marker, whatever the
number of units. ``SchedulerView.calls`` counts them (the status benchmark reports calls per minute).
"""

from __future__ import annotations

import functools
import getpass
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from omegaconf import DictConfig

from kun_hpc.cluster.grid import is_done, plan_grid
from kun_hpc.cluster.slurm import read_registry
from kun_hpc.stages.base import add_stats, read_marker

TERMINAL_BAD = {
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "CANCELLED",
    "PREEMPTED",
}
ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
}


@dataclass
class SchedulerView:
    """Batched, rate-limited view of job states: ``{"123_4": ("RUNNING", reason)}``."""

    min_interval_s: float = 10.0
    calls: Counter = field(default_factory=Counter)
    _last: float = 0.0
    _states: dict[str, tuple[str, str]] = field(default_factory=dict)

    def states(self, jobs: set[str], force: bool = False) -> dict[str, tuple[str, str]]:
        now = time.monotonic()
        if force or not self._states or now - self._last >= self.min_interval_s:
            self._refresh(jobs)
            self._last = time.monotonic()
        return {j: self._states[j] for j in jobs if j in self._states}

    def _refresh(self, jobs: set[str]) -> None:
        queued = self.queued()
        gone = {j for j in jobs if j not in queued}
        finished = self._sacct(gone) if gone else {}
        self._states = {**finished, **queued}

    def queued(self) -> dict[str, tuple[str, str]]:
        """Every job of the user in the queue now: ``{task: (state, reason)}`` (one squeue call)."""
        self.calls["squeue"] += 1
        out = subprocess.run(
            ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"], capture_output=True, text=True
        )
        states = {}
        for line in out.stdout.splitlines():
            job, state, reason = [*line.split("|"), "", ""][:3]
            states[job.strip()] = (state.strip(), reason.strip())
        return states

    def _sacct(self, jobs: set[str]) -> dict[str, tuple[str, str]]:
        arrays = sorted({j.split("_")[0] for j in jobs})
        self.calls["sacct"] += 1
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State,ExitCode"],
            capture_output=True,
            text=True,
        )
        states = {}
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 3:
                for job in expand_array_ids(parts[0]):
                    states[job] = (parts[1].split()[0] if parts[1] else "", f"exit {parts[2]}")
        return states


def queued_tasks(run_dir: Path, view: SchedulerView | None = None) -> dict[str, tuple[str, str]]:
    """The run's registered jobs still in the queue: ``{task: (stage, state)}``."""
    entries = read_registry(run_dir)
    if not entries:
        return {}
    queue = (view or SchedulerView(0)).queued()
    return {t: (e["stage"], queue[t][0]) for e in entries for t in e["tasks"] if t in queue}


def expand_array_ids(job: str) -> list[str]:
    """``123_[0-3,7%2]`` (array tasks that never started share one row) -> ``123_0 .. 123_3, 123_7``."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job)
    if not m:
        return [job]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def wait_for_jobs(
    view: SchedulerView, tasks: Iterable[str], timeout_s: float | None = None
) -> dict[str, str]:
    """Block until all of ``tasks`` (array tasks, jobs) have left the queue; return their final states."""
    jobs = set(tasks)
    start = time.monotonic()
    while True:
        states = view.states(jobs, force=True)
        settled = {j: s for j, (s, _) in states.items() if s and s not in ACTIVE}
        if len(settled) == len(jobs):
            return settled
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(
                f"jobs still running after {timeout_s}s: {sorted(set(jobs) - set(settled))[:10]}"
            )
        time.sleep(view.min_interval_s)


@dataclass
class UnitStatus:
    stage: str
    unit: str
    state: str  # done | running | pending | failed | cancelled | not submitted
    job: str = ""
    why: str = ""
    log: str = ""


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
    states = (view or SchedulerView(0)).states(todo) if todo else {}
    rows: list[UnitStatus] = []
    failed_groups: dict[int, str] = {}
    for stage in grid.stages:
        for u in grid.units[stage]:
            if is_done(u):
                rows.append(UnitStatus(stage, u.name, "done"))
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
                else:
                    rows.append(UnitStatus(stage, u.name, "not submitted"))
                continue
            job, log_dir = latest[(stage, u.name)]
            state, reason = states.get(job, ("UNKNOWN", ""))
            log = _log_path(log_dir, job)
            if state in ("RUNNING", "COMPLETING", "CONFIGURING"):
                rows.append(UnitStatus(stage, u.name, "running", job, "", log))
            elif state in ACTIVE:
                why = reason
                if reason == "DependencyNeverSatisfied" and u.index in failed_groups:
                    why = f"waits on {failed_groups[u.index]}, which failed: will be cancelled"
                rows.append(UnitStatus(stage, u.name, "pending", job, why, log))
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
                rows.append(
                    UnitStatus(
                        stage,
                        u.name,
                        "failed" if state != "CANCELLED" else "cancelled",
                        job,
                        f"{state} {reason}".strip(),
                        log,
                    )
                )
    return rows


def _log_path(log_dir: str, job: str) -> str:
    import submitit

    return str(submitit.SlurmJob(folder=log_dir, job_id=job).paths.stderr)


def merge_job_state(run_dir: Path, view: SchedulerView | None = None) -> tuple[str, str, str] | None:
    """(job, state, reason) of the run's latest merge job (kun_hpc/merge/job.py), if it has one."""
    from kun_hpc.merge.job import merge_tasks

    tasks = merge_tasks(Path(run_dir))
    if not tasks:
        return None
    job = tasks[-1]
    # forced: the view's cached states are those of the jobs asked for last
    state, reason = (view or SchedulerView(0)).states({job}, force=True).get(job, ("UNKNOWN", ""))
    return job, state, reason


def summarize(rows: list[UnitStatus]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for r in rows:
        out.setdefault(r.stage, Counter())[r.state] += 1
    return out


def print_status(rows: list[UnitStatus], console=None) -> None:
    from rich.table import Table

    from kun_hpc.stages.summary import console as make_console

    console = console or make_console()
    table = Table(title="kun-hpc status")
    states = ["done", "running", "pending", "failed", "cancelled", "not submitted"]
    table.add_column("stage")
    for s in states:
        table.add_column(s, justify="right")
    for stage, counts in summarize(rows).items():
        table.add_row(stage, *[str(counts.get(s, 0)) for s in states])
    console.print(table)
    for r in rows:
        if r.state in ("failed", "cancelled") or (r.state == "pending" and r.why.startswith("waits on")):
            console.print(f"  {r.unit}: {r.state}{f' (job {r.job})' if r.job else ''} {r.why}")


def yield_line(cfg: DictConfig) -> str:
    """The run's final pairs per GPU-hour and per task-hour, as its merge report computed them
    (``<merge.output>/report/report.json``, ``quality.cost.summary``: kun_hpc/quality/cost.py); says so when
    the run was not merged yet or its report holds no such figures."""
    path = Path(cfg.merge.output) / "report" / "report.json"
    if not path.is_file():
        return "yield: not merged yet (kun-hpc merge RUN_DIR)"
    try:
        cost = orjson.loads(path.read_bytes()).get("quality", {}).get("cost")
    except orjson.JSONDecodeError as e:
        return f"yield: {path} is not valid JSON ({e}): merge again"
    if not cost:
        return f"yield: {path} holds no cost figures (merge.quality.enabled=false, or an older merge)"
    return f"yield: {cost['summary']}"


def tail(path: str | Path, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"(no log: {e})"


def failed_logs(rows: list[UnitStatus], n: int = 20) -> str:
    parts = []
    for r in rows:
        if r.state == "failed":
            job = f"job {r.job}, " if r.job else ""
            parts.append(f"==> {r.unit} ({job}{r.why}) {r.log}\n{tail(r.log, n)}")
    return "\n\n".join(parts) if parts else "no failed units"


def cancel(cfg: DictConfig) -> list[str]:
    """scancel every array of this run that still has tasks in the queue."""
    arrays = sorted({e["job"] for e in read_registry(Path(cfg.run.dir))})
    if arrays:
        subprocess.run(["scancel", *arrays], check=False)
    return arrays


def corpus_of(shard_path: str | Path) -> str:
    """Shards live at ``<root>/<corpus>/part-XXXXX.jsonl.zst``."""
    return Path(shard_path).parent.name


def funnel_row(step: str, markers: list[dict], total_units: int) -> dict:
    """Records in, out, rejected and quarantined (by reason), in total and by corpus, and the stage's
    ``stats`` (:meth:`~kun_hpc.stages.base.Stage.chunk_stats`, summed), over a step's done markers (stage
    units and dedup apply units have the same counts and per-shard ``shards`` entries)."""
    reasons: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    corpora: dict[str, dict] = {}
    for m in markers:
        reasons.update(m["rejected"])
        bad.update(m["quarantined"])
        for s in m.get("shards", []):
            c = corpora.setdefault(corpus_of(s["input"]), {"in": 0, "out": 0, "rejected": Counter()})
            c["in"] += s["in"]
            c["out"] += s["out"]
            c["rejected"].update(s["rejected"])
            c["rejected"].update(s["quarantined"])
    return {
        "step": step,
        "units_done": len(markers),
        "units": total_units,
        "in": sum(m["in"] for m in markers),
        "out": sum(m["out"] for m in markers),
        "rejected": dict(reasons),
        "quarantined": dict(bad),
        "by_corpus": {k: {**v, "rejected": dict(v["rejected"])} for k, v in sorted(corpora.items())},
        "stats": functools.reduce(add_stats, (m.get("stats", {}) for m in markers), {}),
    }


def stage_markers(cfg: DictConfig) -> list[tuple[str, list[dict], int]]:
    """Per grid stage, in order: (stage, the markers of its done units, its number of units)."""
    grid = plan_grid(cfg)
    out = []
    for stage in grid.stages:
        markers = [m for u in grid.units[stage] if (m := read_marker(u.run_dir, stage, u.name))]
        out.append((stage, markers, len(grid.units[stage])))
    return out


def stage_funnel(cfg: DictConfig) -> list[dict]:
    """One :func:`funnel_row` per grid stage, over its done units."""
    return [funnel_row(stage, markers, units) for stage, markers, units in stage_markers(cfg)]


def print_funnel(cfg: DictConfig, console=None, rows: list[dict] | None = None) -> None:
    """Records in, out, rejected and quarantined (by reason) per stage, summed over its done units."""
    from rich.table import Table

    from kun_hpc.stages.summary import console as make_console

    table = Table(title="kun-hpc funnel (done units)")
    for col in ("stage", "units done", "in", "out", "rejected", "quarantined", "by reason"):
        table.add_column(col, justify="left" if col in ("stage", "by reason") else "right")
    for r in stage_funnel(cfg) if rows is None else rows:
        reasons, bad = r["rejected"], r["quarantined"]
        table.add_row(
            r["step"],
            f"{r['units_done']}/{r['units']}",
            f"{r['in']:,}",
            f"{r['out']:,}",
            f"{sum(reasons.values()):,}",
            f"{sum(bad.values()):,}",
            ", ".join(f"{k}={v}" for k, v in sorted({**reasons, **bad}.items())) or "-",
        )
    (console or make_console()).print(table)
