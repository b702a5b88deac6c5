"""What a step reports: records in, out and quarantined by reason, printed as one table after the first
quarantine entries of each corpus (on every executor: the driver reads them from the quarantine files)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from kun_hpc.core.console import console
from kun_hpc.core.errors import BadInputError


@dataclass
class StepReport:
    name: str
    read: int
    written: int
    shards: int
    quarantined: dict[str, int] = field(default_factory=dict)
    skipped: bool = False  # already done under the same config
    first: list[str] = field(default_factory=list)  # the first quarantine entries' messages (issue 16)
    quarantine: str = ""  # the folder holding all of them

    @classmethod
    def from_manifest(cls, name: str, manifest: dict, skipped: bool = False) -> StepReport:
        return cls(
            name,
            manifest["read"],
            manifest["records"],
            len(manifest["shards"]),
            dict(manifest["quarantined"]),
            skipped,
        )

    @property
    def bad(self) -> int:
        return sum(self.quarantined.values())


def print_reports(reports: list[StepReport], out: Console | None = None) -> None:
    """Each report's first quarantine entries (``quarantined: <file>:<position>: <reason> (<detail>)``) and
    how many more there are, then the table."""
    out = out or console(stderr=True)
    for r in reports:
        for message in r.first:
            out.print(f"quarantined: {message}", markup=False, highlight=False, soft_wrap=True)
        if r.first and r.bad > len(r.first):
            out.print(
                f"{r.name}: {r.bad - len(r.first):,} more quarantined; all are in {r.quarantine}",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip
    table = Table(title="kun-hpc", show_lines=False)
    for col in ("step", "status", "read", "written", "shards", "quarantined", "by reason"):
        table.add_column(
            col, justify="right" if col in ("read", "written", "shards", "quarantined") else "left"
        )
    for r in reports:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(r.quarantined.items())) or "-"
        table.add_row(
            r.name,
            "done before" if r.skipped else "ran",
            f"{r.read:,}",
            f"{r.written:,}",
            str(r.shards),
            f"{r.bad:,}",
            reasons,
        )
    out.print(table)


def check_bad_fraction(reports: list[StepReport], max_bad_fraction: float) -> None:
    for r in reports:
        if r.read and r.bad / r.read > max_bad_fraction:
            raise BadInputError(
                f"{r.name}: {r.bad} of {r.read} input items quarantined ({r.bad / r.read:.2%}) "
                f"> max_bad_fraction {max_bad_fraction:.2%}; see the quarantine folder beside its shards"
            )


def failed_units_message(step: str, failed: list, total: int) -> str:
    lines = [f"{step}: {len(failed)} of {total} units failed; re-run the same command to retry only them"]
    for o in failed[:10]:
        first = o.error.strip().splitlines()[0] if o.error else "unknown error"
        lines.append(f"  {getattr(o.unit, 'unit', o.unit)}: {first}" + (f"  (log: {o.log})" if o.log else ""))
    return "\n".join(lines)
