"""The Slurm scheduler as kun-hpc sees it: the run's job registry, batched job states, waits and cancels;
and the units a local run is running now, which ``status`` and ``cancel`` see as they see Slurm jobs.

Every sbatch call of a run is appended to ``<run>/jobs.jsonl`` (stage, array job id, unit per array index),
which ``status``, ``logs`` and ``cancel`` read. The scheduler is asked at most once per ``poll_interval_s``,
with one ``squeue`` call for all of the user's jobs and one ``sacct`` call for every job that left the queue,
whatever the number of units. ``SchedulerView.calls`` counts them (the status benchmark reports calls per
minute).

A task Slurm requeued (its node failed, it was preempted, ``scontrol requeue``, submitit's own requeue at
the time limit) runs again under the same id; ``sacct -D`` keeps each earlier attempt as a row of its own
(``NODE_FAIL`` on ``node2``, then the attempt that followed). ``squeue`` gives each task's restart count, and
the one ``sacct`` call asks for every attempt (:class:`Attempt`), so ``status`` and ``logs`` name what
happened to a requeued unit without a call per unit.

The local executor records each unit it starts in ``<run>/running/<stage>/<unit>.json`` (its process
group, host, log) and removes it when the unit ends; a record counts only while the command that wrote it
holds the run directory (:mod:`kun_hpc.io.lock`), so one left by a killed command is ignored (issue 16).
"""

from __future__ import annotations

import getpass
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.lock import Holder, holder

REGISTRY = "jobs.jsonl"
MERGE_STAGE = "merge"  # the merge driver's name in the registry (kun_hpc/run.py) and its resources key

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


def record_submission(run_dir: Path, entry: dict) -> None:
    """Append one sbatch call's entry to the run's registry."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / REGISTRY, "ab") as f:
        f.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))


def read_registry(run_dir: Path) -> list[dict]:
    """Every sbatch call of the run, in submission order (empty when it never submitted)."""
    path = Path(run_dir) / REGISTRY
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def merge_tasks(run_dir: Path) -> list[str]:
    """Every merge driver job the run ever submitted."""
    return [t for e in read_registry(run_dir) if e["stage"] == MERGE_STAGE for t in e["tasks"]]


# states in which an attempt ends that Slurm then requeues (with ``--requeue``): it runs again, same task id
REQUEUED_ENDS = {"NODE_FAIL", "PREEMPTED", "REQUEUED"}
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Start,End,Submit"  # one row per attempt with -D
SQUEUE_TRIES = 5  # a busy or restarting slurmctld refuses a call now and then


@dataclass(frozen=True)
class Attempt:
    """One run of a task as ``sacct -D`` keeps it: ``state`` (``NODE_FAIL``, ``COMPLETED``, ...), ``node``
    (its NodeList), ``start`` / ``end`` / ``submit`` as sacct prints them (``2026-12-01T07:52:12``,
    ``Unknown`` while not reached), ``exit`` (``0:0``)."""

    job: str
    state: str
    node: str
    start: str
    end: str
    submit: str
    exit: str = ""

    def event(self) -> str:
        """What ended this attempt, for a user: ``lost node node2 (NODE_FAIL at 2026-12-01T07:52:12)``."""
        at = f"({self.state} at {self.end})"
        if self.state == "NODE_FAIL":
            return f"lost node {self.node} {at}"
        if self.state == "PREEMPTED":
            return f"was preempted on {self.node} {at}"
        return f"was requeued on {self.node} {at}"


@dataclass
class SchedulerView:
    """Batched, rate-limited view of job states: ``{"123_4": ("RUNNING", reason)}``, and of the earlier
    attempts of the tasks Slurm requeued (:meth:`lost`)."""

    min_interval_s: float = 10.0
    calls: Counter = field(default_factory=Counter)
    _last: float = 0.0
    _states: dict[str, tuple[str, str]] = field(default_factory=dict)
    _restarts: dict[str, int] = field(default_factory=dict)  # task -> restart count, tasks in the queue
    _lost: dict[str, list[Attempt]] = field(default_factory=dict)

    def states(self, jobs: set[str], force: bool = False) -> dict[str, tuple[str, str]]:
        now = time.monotonic()
        if force or not self._states or now - self._last >= self.min_interval_s:
            self._refresh(jobs)
            self._last = time.monotonic()
        return {j: self._states[j] for j in jobs if j in self._states}

    def lost(self, job: str) -> list[Attempt]:
        """The attempts of ``job`` (an array task) that ended in a requeue, oldest first, as of the last
        :meth:`states` refresh that asked for it."""
        return self._lost.get(job, [])

    def restarts(self, job: str) -> int:
        """Slurm's restart count of ``job`` while it is in the queue (0 otherwise)."""
        return self._restarts.get(job, 0)

    def _refresh(self, jobs: set[str]) -> None:
        queued = self.queued()
        gone = {j for j in jobs if j not in queued}
        restarted = {j for j in jobs if self._restarts.get(j)}
        history = self.history(gone | restarted) if gone or restarted else {}
        finished = {j: (a[-1].state, f"exit {a[-1].exit}") for j, a in history.items() if j in gone}
        self._states = {**finished, **queued}
        self._lost = {j: lost_attempts(history.get(j, []), j in queued) for j in jobs & history.keys()}

    def queued(self) -> dict[str, tuple[str, str]]:
        """Every job of the user in the queue now: ``{task: (state, reason)}`` (one squeue call; each
        task's restart count is kept for :meth:`restarts`). A failed call is tried again, up to
        ``SQUEUE_TRIES`` times a second apart, then raises RuntimeError: read as an empty queue, it would
        send every job to sacct, where a task Slurm is requeueing still shows the attempt that ended
        (``NODE_FAIL``) and would be taken for failed."""
        fields = "JobArrayID:0|,State:0|,Reason:0|,RestartCnt:0"
        for tried in range(1, SQUEUE_TRIES + 1):
            self.calls["squeue"] += 1
            out = subprocess.run(
                ["squeue", "-h", "-r", "-u", getpass.getuser(), "-O", fields], capture_output=True, text=True
            )
            if out.returncode == 0:
                break
            if tried == SQUEUE_TRIES:
                raise RuntimeError(f"squeue failed {tried} times: {out.stderr.strip()}")
            time.sleep(1)
        states, restarts = {}, {}
        for line in out.stdout.splitlines():
            job, state, reason, count = [*line.split("|"), "", "", ""][:4]
            states[job.strip()] = (state.strip(), reason.strip())
            if count.strip().isdigit() and int(count):
                restarts[job.strip()] = int(count)
        self._restarts = restarts
        return states

    def history(self, jobs: set[str]) -> dict[str, list[Attempt]]:
        """Every attempt of every task of the arrays of ``jobs``, oldest first: ``{task: [Attempt]}`` (one
        ``sacct -D`` call). Array tasks that never started share one row (``123_[4-7]``), expanded here. A
        requeued task's new attempt reaches sacct a few seconds after the row of the one that ended."""
        arrays = sorted({j.split("_")[0] for j in jobs})
        self.calls["sacct"] += 1
        out = subprocess.run(
            ["sacct", "-n", "-P", "-D", "-X", "-j", ",".join(arrays), "-o", SACCT_FIELDS],
            capture_output=True,
            text=True,
        )
        rows: dict[str, list[Attempt]] = {}
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 7:
                state = parts[1].split()[0] if parts[1] else ""  # "CANCELLED by 0" -> CANCELLED
                for job in expand_array_ids(parts[0]):
                    attempt = Attempt(job, state, parts[3], parts[4], parts[5], parts[6], parts[2])
                    rows.setdefault(job, []).append(attempt)
        # a requeued task's rows: by submit time (ISO text sorts as time), sacct's order among equals
        return {job: sorted(attempts, key=lambda a: a.submit) for job, attempts in rows.items()}


def lost_attempts(attempts: list[Attempt], queued: bool) -> list[Attempt]:
    """The attempts of one task that ended in a requeue: those ending ``NODE_FAIL``, ``PREEMPTED`` or
    ``REQUEUED`` but its current one: the last row once the task left the queue (a last ``NODE_FAIL`` is a
    failure: the task was not requeued); while it is queued again every such row is an earlier attempt (the
    row of the new one may not have reached sacct yet)."""
    earlier = attempts if queued else attempts[:-1]
    return [a for a in earlier if a.state in REQUEUED_ENDS]


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


LOCAL_RUNNING = "running"  # <run>/running/<stage>/<unit>.json: the units a local run is running now


def _running_file(run_dir: Path, stage: str, unit: str) -> Path:
    """``unit`` is the unit's log folder name (:func:`~kun_hpc.cluster.executors.log_folder`); a phase's
    name may hold spaces and arrows (``reshard shards -> 5 (merge)``), which a file name does not."""
    return Path(run_dir) / LOCAL_RUNNING / re.sub(r"[^\w.-]+", "_", stage) / f"{unit}.json"


def record_local_start(run_dir: Path, stage: str, unit: str, pid: int, log: str) -> None:
    """A local unit started: its process group ``pid`` (the submitit job id), this host, this driver."""
    entry = {"stage": stage, "unit": unit, "pid": pid, "host": socket.gethostname(), "driver": os.getpid()}
    entry |= {"started": time.time(), "log": log}
    path = _running_file(run_dir, stage, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, orjson.dumps(entry))


def record_local_end(run_dir: Path, stage: str, unit: str) -> None:
    path = _running_file(run_dir, stage, unit)
    path.unlink(missing_ok=True)
    _remove_if_empty(path.parent)


def _remove_if_empty(stage_dir: Path) -> None:
    """Remove a stage's folder of records once it is empty, and ``running/`` with it (issue 16): a run
    leaves no empty folders behind. Only this command writes records (it holds the run directory)."""
    for folder in (stage_dir, stage_dir.parent):
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): it stays
            return


def clear_local_records(run_dir: Path) -> None:
    """Drop the records of commands that are gone (killed with SIGKILL before they could): called by the
    command that holds the run directory now, before it starts a unit."""
    me = (os.getpid(), socket.gethostname())
    for path in (Path(run_dir) / LOCAL_RUNNING).glob("*/*.json"):
        try:
            entry = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            entry = {}
        if (entry.get("driver"), entry.get("host")) != me:
            path.unlink(missing_ok=True)
            _remove_if_empty(path.parent)


def local_running(run_dir: Path, held: Holder | None = None) -> dict[tuple[str, str], dict]:
    """``{(stage, unit): entry}`` of the units a local run is running now: those recorded by the command
    that holds the run directory (``held``: its :func:`~kun_hpc.io.lock.holder`, looked up when None)."""
    held = held or holder(run_dir)
    if held is None:
        return {}
    out = {}
    for path in (Path(run_dir) / LOCAL_RUNNING).glob("*/*.json"):
        try:
            entry = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue  # ended while listed
        if entry["driver"] == held.pid and entry["host"] == held.host:
            out[(entry["stage"], entry["unit"])] = entry
    return out


def cancel_local(run_dir: Path, wait_s: float = 60.0) -> str:
    """Stop the local command that holds the run directory on this machine (SIGTERM: it stops its workers
    and exits 143) and wait up to ``wait_s`` for it to let go; what happened, in a line ("" when no local
    command holds it: nothing, or a Slurm job that ``scancel`` ends)."""
    held = holder(run_dir)
    if held is None or held.job or held.pid <= 0:
        return ""
    if not held.here:
        return f"the run is held by {held.describe()}: run kun-hpc cancel on {held.host}"
    units = len(local_running(run_dir, held))
    try:
        os.kill(held.pid, signal.SIGTERM)
    except ProcessLookupError:
        return ""
    deadline = time.monotonic() + wait_s
    while holder(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if holder(run_dir) is not None:
        return f"sent SIGTERM to {held.describe()}; it still holds the run after {wait_s:.0f} s"
    return f"stopped {held.describe()} and its {units} running unit{'' if units == 1 else 's'}"


def cancel(run_dir: Path) -> list[str]:
    """scancel every array of this run (those that left the queue ignore it); the array ids."""
    arrays = sorted({e["job"] for e in read_registry(Path(run_dir))})
    if arrays:
        subprocess.run(["scancel", *arrays], check=False)
    return arrays


def scancel(jobs: list[str]) -> None:
    """scancel these jobs (array tasks or jobs)."""
    if jobs:
        subprocess.run(["scancel", *jobs], check=False)


def tail(path: str | Path, n: int = 20, missing: str | None = None) -> str:
    """The last ``n`` lines of a log; ``missing`` (default: ``(no log: <why>)``) when it cannot be read."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"(no log: {e})" if missing is None else missing
