"""A progress bar per stage (or phase) while units run locally or inline; Slurm waits have their own view
(``kun-hpc run --wait`` / ``status --watch``, from the scheduler and the markers)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kun_hpc.cluster.executors import Outcome


class StageBars:
    """One bar per stage or phase name, advanced by :meth:`done` as each unit ends."""

    def __init__(self, progress: Progress | None, totals: Mapping[str, int]):
        self.progress = progress
        self.tasks = {}
        if progress is not None:
            for name, total in totals.items():
                self.tasks[name] = progress.add_task(name, total=total, failed="")
        self.failed: dict[str, int] = {}
        self.skipped: dict[str, int] = {}

    def done(self, outcome: Outcome) -> None:
        """The callback an executor calls as each unit ends (``outcome.name`` is its stage or phase); a unit
        that will not run (an upstream unit failed) shrinks its bar, which says so instead of stalling."""
        name = outcome.name
        if outcome.skipped:
            self.skipped[name] = self.skipped.get(name, 0) + 1
        elif not outcome.ok:
            self.failed[name] = self.failed.get(name, 0) + 1
        if self.progress is None or name not in self.tasks:
            return
        notes = []
        if self.failed.get(name):
            notes.append(f"[red]{self.failed[name]} failed")
        if self.skipped.get(name):
            notes.append(f"[yellow]{self.skipped[name]} not run: upstream failed")
        task = self.tasks[name]
        if outcome.skipped:
            self.progress.update(task, total=self.progress.tasks[task].total - 1, failed=" ".join(notes))
        else:
            self.progress.update(task, advance=1, failed=" ".join(notes))


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
