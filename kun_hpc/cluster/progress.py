"""A progress bar per stage (or phase) while units run locally or inline; Slurm waits have their own view
(``kun-hpc run --wait`` / ``status --watch``, from the scheduler and the markers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kun_hpc.cluster.executors import Outcome


class StageBars:
    """One bar per name; :meth:`on_done` gives the callback an executor calls as each unit ends."""

    def __init__(self, progress: Progress | None, totals: Mapping[str, int]):
        self.progress = progress
        self.tasks = {}
        if progress is not None:
            for name, total in totals.items():
                self.tasks[name] = progress.add_task(name, total=total, failed="")
        self.failed: dict[str, int] = dict.fromkeys(totals, 0)

    def on_done(self, name: str) -> Callable[[Outcome], None]:
        def done(outcome: Outcome) -> None:
            if not outcome.ok:
                self.failed[name] += 1
            if self.progress is not None:
                failed = f"[red]{self.failed[name]} failed" if self.failed[name] else ""
                self.progress.update(self.tasks[name], advance=1, failed=failed)

        return done

    def skip(self, name: str, n: int, why: str) -> None:
        """Units that will not run (an upstream unit failed): the bar says so instead of stalling."""
        if self.progress is not None and n:
            self.progress.update(self.tasks[name], total=self.progress.tasks[self.tasks[name]].total - n,
                                 failed=f"[yellow]{n} not run: {why}")  # fmt: skip


@contextmanager
def stage_bars(totals: Mapping[str, int], enabled: bool = True) -> Iterator[StageBars]:
    """Bars on stderr for the names with work to do (none when ``enabled`` is false or nothing runs)."""
    todo = {k: v for k, v in totals.items() if v}
    if not enabled or not todo:
        yield StageBars(None, todo)
        return
    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[failed]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield StageBars(progress, todo)
