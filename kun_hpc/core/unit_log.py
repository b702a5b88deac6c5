"""A unit's own lines in its log (issue 16, item 10): every unit an executor runs -- a stage unit
(:mod:`kun_hpc.stages.runner`), a shard or reshard unit, a global phase's unit (:mod:`kun_hpc.cluster.phases`)
-- writes ``kun-hpc unit <name>: ...`` lines to stderr, which is the unit's log, in a worker process (local or
Slurm; :func:`in_worker`): one at the start (what it reads, where it writes, its resume point, host and job
or pid), one at the end (counts, records this attempt, rate, elapsed time), and one when it fails or is
interrupted (SIGINT, or SIGTERM raised as :class:`KeyboardInterrupt`): then it says what a re-run does
instead of a failure. An inline run shows progress bars instead, so the lines are off there.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType

from kun_hpc.core.counts import Counts

LOG_PREFIX = "kun-hpc unit"


def in_worker() -> bool:
    """Whether this process runs units for an executor that keeps a log per unit: submitit sets
    ``SUBMITIT_EXECUTOR`` (local and Slurm), a hand-written sbatch script runs under ``SLURM_JOB_ID``."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SLURM_JOB_ID"))


def slurm_job() -> str:
    """This process's Slurm job as ``squeue``, ``sacct`` and ``kun-hpc status`` name it: ``132_2`` for task 2
    of array 132 (whose own ``SLURM_JOB_ID`` is another number), the job id otherwise; "" off Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def counts_text(c: Counts) -> str:
    """``in 400 out 380 rejected 15 quarantined 5`` (plus the units a fan-out stage wrote)."""
    rejected, bad = sum(c.rejected.values()), sum(c.quarantined.values())
    text = f"in {c.in_} out {c.out} rejected {rejected} quarantined {bad}"
    if c.units is not None and c.units.out != c.out:  # a fan-out stage: the lines it writes are units
        text += f" (units out {c.units.out})"
    return text


def files_text(paths: list[str] | tuple[str, ...], shown: int = 2) -> str:
    """Paths for a log line: all of them, or the first ``shown`` and how many more."""
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more if paths else "nothing"


class UnitLog:
    """The lines of unit ``name`` (silent when ``enabled`` is false; :func:`in_worker` when None).
    ``records`` counts what this attempt processed (not what it resumed past); rates are over its seconds.
    ``on_interrupt`` says what stays of an interrupted attempt and what a re-run does. As a context
    manager, it logs the failure or interrupt of its block and lets the exception go on."""

    def __init__(
        self,
        name: str,
        enabled: bool | None = None,
        on_interrupt: str = "this unit commits whole; a re-run runs it again",
    ):
        self.name = name
        self.enabled = in_worker() if enabled is None else enabled
        self.on_interrupt = on_interrupt
        self.started = time.time()
        self.records = 0

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"{LOG_PREFIX} {self.name}: {text}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.time() - self.started

    def rate(self) -> str:
        seconds = self.elapsed()
        return f"{self.records / seconds:.1f} rec/s" if seconds > 0 else "? rec/s"

    def start(self, what: str) -> None:
        """``start: <what>, host H, pid P`` (on Slurm: ``host H, job J, restarts R``)."""
        host, job = os.uname().nodename, slurm_job()
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0") or "0"
        where = f"host {host}" + (f", job {job}, restarts {restarts}" if job else f", pid {os.getpid()}")
        self.line(f"start: {what}, {where}")

    def end(self, summary: str) -> None:
        self.line(
            f"done: {summary}; {self.records} records this attempt, {self.rate()}, "
            f"elapsed {self.elapsed():.1f} s"
        )

    def failed(self, e: BaseException) -> None:
        if isinstance(e, KeyboardInterrupt):  # SIGINT (how a local run stops its workers) or SIGTERM
            self.line(
                f"interrupted after {self.elapsed():.1f} s ({self.records} records this attempt; "
                f"{self.on_interrupt})"
            )
            return
        why = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
        self.line(f"failed after {self.elapsed():.1f} s ({self.records} records this attempt): {why}")

    def __enter__(self) -> UnitLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is not None:
            self.failed(e)
