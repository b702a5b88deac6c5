"""A progress bar per stage (or phase) while units run locally or inline; Slurm waits have their own view
(``kun-hpc run --wait`` / ``status --watch``, from the scheduler and the markers).

A stage's bar counts units and, given ``records`` (a line per stage: its records done/total, rate and ETA,
as :meth:`kun_hpc.cluster.rates.StageProgress.summary` writes it), also shows that line, read again from the
run's files every ``REFRESH_S`` seconds while units run, so a long unit does not sit at 0/N (issue 16).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kun_hpc.cluster.executors import Outcome
from kun_hpc.core.console import console

REFRESH_S = 2.0  # how often the records column is read again (at least; a slow read waits 10x as long)

Records = Callable[[], Mapping[str, str]]  # stage -> its records line


class StageBars:
    """One bar per stage or phase name, advanced by :meth:`done` as each unit ends; :meth:`refresh` sets the
    records column from ``records`` (when given)."""

    def __init__(self, progress: Progress | None, totals: Mapping[str, int], records: Records | None = None):
        self.progress = progress
        self.records = records
        self.tasks = {}
        if progress is not None:
            for name, total in totals.items():
                self.tasks[name] = progress.add_task(name, total=total, failed="", records="")
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

    def refresh(self) -> None:
        """Read the records done, rate and ETA of each stage again (a file being replaced as it is read
        leaves the column as it was until the next refresh)."""
        if self.progress is None or self.records is None:
            return
        try:
            records = self.records()
        except (OSError, ValueError):
            return
        for name, task in self.tasks.items():
            if name in records:
                self.progress.update(task, records=records[name])


@contextmanager
def stage_bars(
    totals: Mapping[str, int], enabled: bool = True, records: Records | None = None
) -> Iterator[StageBars]:
    """Bars on stderr for the names with work to do (none when ``enabled`` is false or nothing runs); with
    ``records``, a column of records done/total, rate and ETA per stage, refreshed every ``REFRESH_S``."""
    todo = {k: v for k, v in totals.items() if v}
    if not enabled or not todo:
        yield StageBars(None, todo)
        return
    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[records]}"),
        TextColumn("{task.fields[failed]}"),
    )
    with Progress(*columns, console=console(stderr=True), transient=False) as progress:
        bars = StageBars(progress, todo, records)
        stop = threading.Event()

        def refresh() -> None:
            while True:
                started = time.monotonic()
                bars.refresh()
                if stop.wait(max(REFRESH_S, 10 * (time.monotonic() - started))):
                    return

        thread = threading.Thread(target=refresh, name="kun-stage-bars", daemon=True)
        if records is not None:
            thread.start()
        try:
            yield bars
        finally:
            stop.set()
            if records is not None:
                thread.join()
                bars.refresh()  # the final counts
