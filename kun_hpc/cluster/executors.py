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

What Slurm can express is coarser than a task list, so on Slurm: units that each wait for the task of the
same index of one earlier array are chained task by task (``aftercorr``, what the grid submits); any other
``after`` waits for every array it names (``afterok``), so a failure anywhere in those arrays cancels the
unit. A unit cancelled that way ends ``CANCELLED`` (``ok`` false, not ``skipped``), and Slurm outcomes are
known, and ``on_done`` called, once every waited task left the queue.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    log_dir: str = ""  # slurm: where submitit keeps its logs and result


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


def failure_line(o: Outcome) -> str:
    """``unit: first line of its error (log: path)``: how a failed unit is named in messages."""
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


class LocalExecutor(_QueueExecutor):
    """submitit LocalExecutor with a concurrency cap (submitit's own starts every job at once)."""

    kind = "local"

    def __init__(self, max_parallel: int = 2, timeout_min: int = 24 * 60, poll_s: float = 0.2):
        super().__init__()
        self.max_parallel = max_parallel
        self.timeout_min = timeout_min
        self.poll_s = poll_s
        self._running: list[tuple[_Queued, Any]] = []

    def wait(self, tasks, on_done=None):
        import submitit

        needed = self._needed(tasks)
        while any(t.outcome is None for t in tasks):
            for q in self._take(self.max_parallel - len(self._running), on_done, needed):
                ex = submitit.LocalExecutor(folder=str(q.log_dir / "%j"))
                ex.update_parameters(timeout_min=self.timeout_min)
                self._running.append((q, ex.submit(q.fn, q.task.unit)))
            if not self._running:
                if any(t.outcome is None for t in tasks):
                    raise _stuck("local")
                break
            still = []
            for q, job in self._running:
                if not job.done():
                    still.append((q, job))
                    continue
                log = str(job.paths.stderr)
                try:
                    outcome = Outcome(q.task.unit, True, job.result(), log=log)
                except Exception as e:
                    outcome = Outcome(q.task.unit, False, error=f"{type(e).__name__}: {e}", log=log)
                self._end(q.task, outcome, on_done)
                with contextlib.suppress(OSError):  # submitit makes the folder's template itself, left empty
                    (q.log_dir / "%j").rmdir()
            if len(still) == len(self._running):
                time.sleep(self.poll_s)
            self._running = still
        return [t.outcome for t in tasks]  # type: ignore[misc]
