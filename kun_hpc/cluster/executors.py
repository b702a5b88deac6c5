"""Executors run a function over a list of work units; they know nothing about what the units do.

One interface, three backends:

* ``inline``: in this process, one unit after another (debugging, tests).
* ``local``: submitit's LocalExecutor, one subprocess per unit, at most ``max_parallel`` at once.
* ``slurm``: submitit on sbatch arrays (:mod:`kun_hpc.cluster.slurm`).

:meth:`Executor.submit` hands units over and returns one :class:`Task` per unit; ``after[i]`` names the task
(or tasks) unit ``i`` must wait for: it starts once they succeeded and never runs when one failed (its
outcome says so). Every backend honours it -- Slurm with ``--dependency=aftercorr`` / ``afterok``, the
others by starting a unit only when its upstream ended -- so one algorithm chains a run's stages whatever
runs them (:mod:`kun_hpc.cluster.dag`). :meth:`Executor.wait` blocks until tasks ended and returns their
:class:`Outcome`; :meth:`Executor.map` is both. Inline and local backends start units when they are waited
for (those tasks and what they wait for, nothing else); Slurm's run as soon as submitted, and outlive this
process (``detached``).

A local unit runs in a process group of its own (submitit's controller, the worker, what the worker starts:
vLLM's engine processes), with a log folder named by the unit (``<log_dir>/<unit>/``). An interrupt of
the command (SIGINT, SIGTERM, ``kun-hpc cancel``) ends every running group before it returns, and a
worker whose command died without that (``kill -9``) ends its own group: no worker outlives its command
to write beside the next one (issue 16). Workers, local and Slurm, import the code the command runs, not a
``kun_hpc`` of their working directory (:func:`worker_env`).

What Slurm can express is coarser than a task list, so on Slurm: units that each wait for the task of the
same index of one earlier array are chained task by task (``aftercorr``, what the grid submits); any other
``after`` waits for every array it names (``afterok``), so a failure anywhere in those arrays cancels the
unit. A unit cancelled that way ends ``CANCELLED`` (``ok`` false, not ``skipped``), and Slurm outcomes are
known, and ``on_done`` called, once every waited task left the queue.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kun_hpc
from kun_hpc.cluster.scheduler import clear_local_records, record_local_end, record_local_start


@dataclass
class Outcome:
    """How one unit ended: its return value, or the error and where its log is."""

    unit: Any
    ok: bool
    result: Any = None
    error: str = ""
    log: str = ""
    name: str = ""  # the stage or phase it belongs to (what it was submitted as)
    skipped: bool = False  # never ran: a task it had to wait for failed


@dataclass(eq=False)
class Task:
    """One submitted unit. ``job`` is the scheduler's id (``123_4``, or ``60`` for a one-unit array) when it
    has one; ``outcome`` is set once it ended and was waited for."""

    name: str
    unit: Any
    job: str = ""
    outcome: Outcome | None = None
    array: str = ""  # slurm: the array job and this task's index in it, for aftercorr chains
    index: int = 0
    seq: int = 0  # slurm: which sbatch call submitted it (chains are submitted in this order)
    log_dir: str = ""  # where submitit keeps its logs and result (local: the unit's own folder)


After = Task | Sequence[Task] | None
OnDone = Callable[[Outcome], None]


def upstream(after: After) -> list[Task]:
    """The tasks an ``after`` entry names, as a list."""
    if after is None:
        return []
    return [after] if isinstance(after, Task) else list(after)


def unit_name(unit: Any) -> str:
    """How a unit is named in messages: its ``name`` (stage and phase units), else the unit itself."""
    return str(getattr(unit, "name", unit))


def check_after(units: Sequence[Any], after: Sequence[After] | None) -> None:
    """``after`` names one entry per unit; ValueError otherwise."""
    if after is not None and len(after) != len(units):
        raise ValueError(f"after= has {len(after)} entries for {len(units)} units: one per unit (None: none)")


def exception_line(trace: str) -> str:
    """The exception of a formatted traceback, ``Type: message`` (its message's first line; the last
    exception of a chain): what a failure is shown as (issue 16). '' when ``trace`` holds none."""
    lines = trace.rstrip().splitlines()
    # the exception starts at the last unindented line after the last frame ("  File ...")
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    head = [line for line in lines[start:] if line and not line[0].isspace()]
    return head[0] if head else ""


def job_error(result_pickle: Path) -> str:
    """The error a submitit job recorded in its result pickle (``("error", traceback)``), as
    ``Type: message`` then the traceback; '' when it recorded none (it succeeded, or was killed)."""
    from submitit.core.utils import pickle_load

    try:
        outcome, trace = pickle_load(result_pickle)
    except (OSError, EOFError, ValueError, TypeError):
        return ""
    return f"{exception_line(trace)}\n{trace}" if outcome == "error" else ""


def failure_line(o: Outcome) -> str:
    """``unit: first line of its error (log: path)``: how a failed unit is named in messages; the error's
    first line is the exception, ``Type: message``."""
    first = o.error.strip().splitlines()[0] if o.error.strip() else "failed"
    return f"{unit_name(o.unit)}: {first}" + (f" (log: {o.log})" if o.log else "")


class Executor:
    """The interface every backend implements (see the module docstring)."""

    kind = "base"
    detached = False  # submissions run under a scheduler and outlive this process

    def submit(
        self,
        fn: Callable[[Any], Any],
        units: Sequence[Any],
        *,
        name: str,
        log_dir: Path,
        after: Sequence[After] | None = None,
    ) -> list[Task]:
        """Hand ``fn`` over ``units`` to the backend; one :class:`Task` per unit, in order. ``after[i]``: the
        task(s) unit ``i`` runs after (``None``: none)."""
        raise NotImplementedError

    def wait(self, tasks: Sequence[Task], on_done: OnDone | None = None) -> list[Outcome]:
        """Block until every task ended; their outcomes in order. ``on_done`` is called with each outcome as
        its unit ends (progress bars)."""
        raise NotImplementedError

    def map(
        self,
        fn: Callable[[Any], Any],
        units: Sequence[Any],
        *,
        name: str,
        log_dir: Path,
        on_done: OnDone | None = None,
    ) -> list[Outcome]:
        """``fn`` over ``units`` and wait: one :class:`Outcome` each, in order."""
        if not units:
            return []
        return self.wait(self.submit(fn, units, name=name, log_dir=Path(log_dir)), on_done)


@dataclass(eq=False)
class _Queued:
    task: Task
    fn: Callable[[Any], Any]
    log_dir: Path
    after: list[Task] = field(default_factory=list)


class _QueueExecutor(Executor):
    """Inline and local: submitted units wait in a queue; :meth:`wait` starts them in submission order as
    their upstream tasks end."""

    def __init__(self) -> None:
        self._queue: list[_Queued] = []

    def submit(self, fn, units, *, name, log_dir, after=None):
        check_after(units, after)
        tasks = [Task(name, u) for u in units]
        for i, t in enumerate(tasks):
            self._queue.append(_Queued(t, fn, Path(log_dir), upstream(after[i]) if after else []))
        return tasks

    def _needed(self, tasks: Sequence[Task]) -> set[int]:
        """``tasks`` and every queued task they wait for, directly or not (ids)."""
        queued = {id(q.task): q for q in self._queue}
        needed, todo = {id(t) for t in tasks}, list(tasks)
        while todo:
            q = queued.get(id(todo.pop()))
            for up in q.after if q else ():
                if id(up) not in needed:
                    needed.add(id(up))
                    todo.append(up)
        return needed

    def _take(self, limit: int, on_done: OnDone | None, needed: set[int]) -> list[_Queued]:
        """Up to ``limit`` queued units among ``needed`` whose upstream ended, in submission order, out of
        the queue; a unit whose upstream failed ends here, skipped."""
        taken: list[_Queued] = []
        for q in list(self._queue):
            if len(taken) >= limit:
                break
            if id(q.task) not in needed or any(t.outcome is None for t in q.after):
                continue
            self._queue.remove(q)
            failed = [t for t in q.after if not t.outcome.ok]  # type: ignore[union-attr]
            if failed:
                why = f"not run: upstream {unit_name(failed[0].unit)} failed"
                self._end(q.task, Outcome(q.task.unit, False, error=why, skipped=True), on_done)
            else:
                taken.append(q)
        return taken

    @staticmethod
    def _end(task: Task, outcome: Outcome, on_done: OnDone | None) -> None:
        outcome.name = task.name
        task.outcome = outcome
        if on_done:
            on_done(outcome)


def _stuck(backend: str) -> RuntimeError:
    return RuntimeError(f"{backend} executor: tasks wait for tasks that were never submitted")


class InlineExecutor(_QueueExecutor):
    kind = "inline"

    def wait(self, tasks, on_done=None):
        needed = self._needed(tasks)
        while any(t.outcome is None for t in tasks):
            ready = self._take(1, on_done, needed)
            if not ready:
                if any(t.outcome is None for t in tasks):
                    raise _stuck("inline")
                break
            (q,) = ready
            try:
                outcome = Outcome(q.task.unit, True, q.fn(q.task.unit))
            except Exception as e:  # a unit's failure is reported, the others still run
                outcome = Outcome(
                    q.task.unit, False, error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
                )
            self._end(q.task, outcome, on_done)
        return [t.outcome for t in tasks]  # type: ignore[misc]


def worker_env() -> dict[str, str]:
    """The environment a worker (local or Slurm) runs with, so that it runs the code this command runs:
    its working directory is not put first on the path (``PYTHONSAFEPATH``: submitit starts workers as
    ``python -m`` in it, where another checkout's ``kun_hpc`` would otherwise win); the folder this
    ``kun_hpc`` comes from is, then this command's working directory (custom stages,
    ``package.module:Class``), then the ``PYTHONPATH`` it had."""
    here = [str(Path(kun_hpc.__file__).resolve().parent.parent), os.getcwd()]
    old = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join(dict.fromkeys([*here, *old]))}


def log_folder(unit: Any, name: str, position: int) -> str:
    """A unit's log folder name: its ``name`` (``upper-00003``), else the array's name and its position."""
    own = getattr(unit, "name", None)
    return re.sub(r"[^\w.-]+", "_", own if isinstance(own, str) and own else f"{name}-{position:05d}")


def _alive(pid: int) -> bool:
    """The process runs (a zombie, which died and was not reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def end_groups(groups: Sequence[int], grace_s: float, waiting: Callable[[], bool] = lambda: True) -> None:
    """End process groups: SIGINT (Python unwinds; submitit's controller stops its worker), then SIGKILL to
    what is left of them after ``grace_s`` seconds, or once ``waiting()`` is False."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGINT and waiting() and time.monotonic() < deadline:
            time.sleep(0.05)


def _interrupt_once(signum: int, frame: Any) -> None:
    """A local worker's SIGINT handler: the first SIGINT raises :class:`KeyboardInterrupt`, later ones are
    ignored. The command's SIGINT reaches a worker twice, a moment apart (sent to its process group, then
    forwarded by submitit's controller, which SIGKILLs it 1 s later): the second must not cut short the
    unwinding of the first (the unit log's "interrupted after", its lock, its writers' temporary files).
    SIGINT stays ignored: the worker is ending."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@dataclass
class _Watched:
    """What a local worker runs: ``fn``, under :func:`_interrupt_once`, and a watch that ends the worker's
    process group once the command that started it died without ending it (``kill -9``)."""

    fn: Callable[[Any], Any]
    driver: int  # the command's pid

    def __call__(self, unit: Any) -> Any:
        signal.signal(signal.SIGINT, _interrupt_once)
        threading.Thread(target=self._watch, daemon=True).start()
        return self.fn(unit)

    def _watch(self) -> None:
        while _alive(self.driver):
            time.sleep(1.0)
        end_groups([os.getpgrp()], 0.0)  # at once: the command is gone, nothing waits for a clean end


def _submitit_local() -> type:
    """submitit's LocalExecutor, with its job controller started in a session of its own (one process group:
    the controller, the worker, what the worker starts), :func:`worker_env`, and the controller's own
    output in the unit's log folder (not on the command's terminal). The environment is submitit's
    ``start_controller``'s (submitit 1.5.4)."""
    import submitit
    from submitit.local.local import LocalJob

    class SessionLocalExecutor(submitit.LocalExecutor):
        def _submit_command(self, command: str) -> LocalJob:
            p = self.parameters
            env = {
                **os.environ,
                **worker_env(),
                "SUBMITIT_LOCAL_NTASKS": "1",
                "SUBMITIT_LOCAL_COMMAND": command,
                "SUBMITIT_LOCAL_TIMEOUT_S": str(int(60 * p.get("timeout_min", 2.0))),
                "SUBMITIT_LOCAL_SIGNAL_DELAY_S": str(int(p.get("signal_delay_s", 30))),
                "SUBMITIT_LOCAL_NODEID": "0",
                "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
                "SUBMITIT_STDERR_TO_STDOUT": "",
                "SUBMITIT_EXECUTOR": "local",
                "CUDA_VISIBLE_DEVICES": "",  # as submitit: a local job is given no GPU (gpus_per_node 0)
                "SUBMITIT_LOCAL_WITH_SHELL": "",
            }
            cmd = [sys.executable, "-m", "submitit.local._local", str(self.folder)]
            with open(Path(self.folder) / "controller.log", "ab") as out:
                process = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=[0])

    return SessionLocalExecutor


class LocalExecutor(_QueueExecutor):
    """submitit LocalExecutor with a concurrency cap (submitit's own starts every job at once). With
    ``run_dir``, each running unit is recorded where ``status`` and ``cancel`` find it
    (:func:`~kun_hpc.cluster.scheduler.record_local_start`). ``grace_s``: how long, once interrupted, a
    unit's process group may take to end before what is left of it is killed (submitit's controller gives
    the worker itself 1 s; this bounds what the worker started, e.g. vLLM's engine processes)."""

    kind = "local"

    def __init__(
        self,
        max_parallel: int = 2,
        timeout_min: int = 24 * 60,
        poll_s: float = 0.2,
        run_dir: str | Path | None = None,
        grace_s: float = 10.0,
    ):
        super().__init__()
        self.max_parallel = max_parallel
        self.timeout_min = timeout_min
        self.poll_s = poll_s
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.grace_s = grace_s
        self._running: list[tuple[_Queued, Any]] = []
        self._cleared = False

    def submit(self, fn, units, *, name, log_dir, after=None):
        tasks = super().submit(fn, units, name=name, log_dir=log_dir, after=after)
        for i, t in enumerate(tasks):
            t.log_dir = str(Path(log_dir) / log_folder(t.unit, name, i))
        return tasks

    def wait(self, tasks, on_done=None):
        try:
            return self._wait(tasks, on_done)
        except BaseException:  # an interrupt (SIGINT, SIGTERM) or an error: no worker outlives the wait
            self.stop()
            raise

    def _start(self, q: _Queued) -> Any:
        ex = _submitit_local()(folder=q.task.log_dir)
        ex.update_parameters(timeout_min=self.timeout_min)
        job = ex.submit(_Watched(q.fn, os.getpid()), q.task.unit)
        q.task.job = job.job_id
        if self.run_dir is not None:
            if not self._cleared:  # this command holds the run directory: other records are stale
                clear_local_records(self.run_dir)
                self._cleared = True
            record_local_start(
                self.run_dir, q.task.name, Path(q.task.log_dir).name, int(job.job_id), str(job.paths.stderr)
            )
        return job

    def _finish(self, q: _Queued, job: Any, on_done: OnDone | None) -> None:
        log = str(job.paths.stderr)
        try:
            outcome = Outcome(q.task.unit, True, job.result(), log=log)
        except Exception as e:  # the worker's exception, from its result pickle, else submitit's
            error = job_error(job.paths.result_pickle) or f"{type(e).__name__}: {e}"
            outcome = Outcome(q.task.unit, False, error=error, log=log)
        if self.run_dir is not None:
            record_local_end(self.run_dir, q.task.name, Path(q.task.log_dir).name)
        self._end(q.task, outcome, on_done)

    def _wait(self, tasks: Sequence[Task], on_done: OnDone | None) -> list[Outcome]:
        needed = self._needed(tasks)
        while any(t.outcome is None for t in tasks):
            for q in self._take(self.max_parallel - len(self._running), on_done, needed):
                self._running.append((q, self._start(q)))
            if not self._running:
                if any(t.outcome is None for t in tasks):
                    raise _stuck("local")
                break
            still = [(q, job) for q, job in self._running if not job.done()]
            for q, job in self._running:
                if (q, job) not in still:
                    self._finish(q, job, on_done)
            if len(still) == len(self._running):
                time.sleep(self.poll_s)
            self._running = still
        return [t.outcome for t in tasks]  # type: ignore[misc]

    def stop(self) -> None:
        """End every running unit's process group (SIGINT, SIGKILL after ``grace_s``) and forget it; its
        committed chunks stay, so running the command again resumes it."""
        running, self._running = self._running, []
        groups = [int(job.job_id) for _, job in running]
        end_groups(groups, self.grace_s, lambda: any(not job.done() for _, job in running))
        for q, job in running:
            job._process.wait()  # reaped: no zombie left behind
            if self.run_dir is not None:
                record_local_end(self.run_dir, q.task.name, Path(q.task.log_dir).name)
