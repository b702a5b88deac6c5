"""Executors run a function over a list of work units; they know nothing about what the units do.

* ``inline``: in this process, one after another (debugging, tests).
* ``local``: submitit's LocalExecutor, one subprocess per unit, at most ``max_parallel`` at once.
* ``slurm``: submitit on sbatch arrays (see :mod:`kun_hpc.cluster.slurm`).
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


@dataclass
class Outcome:
    """How one unit ended: its return value, or the error and where its log is."""

    unit: Any
    ok: bool
    result: Any = None
    error: str = ""
    log: str = ""


OnDone = Callable[[Outcome], None]


class Executor:
    kind = "base"

    def map(
        self,
        fn: Callable[[Any], Any],
        units: Sequence[Any],
        *,
        name: str,
        log_dir: Path,
        on_done: OnDone | None = None,
    ) -> list[Outcome]:
        """``fn`` over ``units``: one :class:`Outcome` each, in order; ``on_done`` is called with each
        outcome as its unit ends (progress bars)."""
        raise NotImplementedError


class InlineExecutor(Executor):
    kind = "inline"

    def map(self, fn, units, *, name, log_dir, on_done=None):
        out = []
        for u in units:
            try:
                out.append(Outcome(u, True, fn(u)))
            except Exception as e:  # a unit's failure is reported, the others still run
                out.append(Outcome(u, False, error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            if on_done:
                on_done(out[-1])
        return out


class LocalExecutor(Executor):
    """submitit LocalExecutor with a concurrency cap (submitit's own starts every job at once)."""

    kind = "local"

    def __init__(self, max_parallel: int = 2, timeout_min: int = 24 * 60, poll_s: float = 0.2):
        self.max_parallel = max_parallel
        self.timeout_min = timeout_min
        self.poll_s = poll_s

    def map(self, fn, units, *, name, log_dir, on_done=None):
        import submitit

        ex = submitit.LocalExecutor(folder=str(Path(log_dir) / "%j"))
        ex.update_parameters(timeout_min=self.timeout_min)
        todo = list(enumerate(units))[::-1]
        running: list[tuple[int, Any]] = []
        out: list[Outcome | None] = [None] * len(units)
        while todo or running:
            while todo and len(running) < self.max_parallel:
                i, u = todo.pop()
                running.append((i, ex.submit(fn, u)))
            still = []
            for i, job in running:
                if not job.done():
                    still.append((i, job))
                    continue
                try:
                    out[i] = Outcome(units[i], True, job.result(), log=str(job.paths.stderr))
                except Exception as e:
                    out[i] = Outcome(
                        units[i], False, error=f"{type(e).__name__}: {e}", log=str(job.paths.stderr)
                    )
                if on_done:
                    on_done(out[i])
            if len(still) == len(running) and running:
                time.sleep(self.poll_s)
            running = still
        with contextlib.suppress(OSError):  # submitit makes the folder's template itself, left empty
            (Path(log_dir) / "%j").rmdir()
        return out  # type: ignore[return-value]


def make_executor(cfg: DictConfig) -> Executor:
    kind = cfg.executor.kind
    if kind == "inline":
        return InlineExecutor()
    if kind == "local":
        return LocalExecutor(cfg.executor.max_parallel)
    if kind == "slurm":
        from kun_hpc.cluster.slurm import SlurmExecutor

        return SlurmExecutor(cfg)
    raise ValueError(f"unknown executor.kind {kind!r}")
