"""The ``kun-hpc review export|import`` command: its arguments, what it prints and its exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kun_hpc.config import ConfigError
from kun_hpc.quality.review.agreement import import_review
from kun_hpc.quality.review.common import (
    AGREEMENT_NAME,
    CSV_NAME,
    EXPORT_NAME,
    HUMAN,
    RESAMPLES,
    REVIEW_DIR,
    STAGES,
    TARGET_PRECISION,
    ReviewError,
)
from kun_hpc.quality.review.export import ReviewSet, export_review
from kun_hpc.quality.review.summary import confusion_table, reason_table, summary_lines

HELP = "a review set for people to judge, and the judge measured against their verdicts"


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("review", help=HELP, description=HELP)
    rs = r.add_subparsers(dest="review_command", required=True)
    e = rs.add_parser("export", help="write review.csv and Label Studio files of a stratified sample")
    e.add_argument("run", metavar="RUN", help="a run folder (holds config.yaml)")
    e.add_argument("--stage", choices=STAGES, default="point", help="what to review (default point)")
    e.add_argument("-n", type=int, default=200, help="how many records (default 200)")
    e.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    e.add_argument("--out", help=f"the folder to write (default RUN/{REVIEW_DIR})")
    e.add_argument("--force", action="store_true", help=f"replace an existing {CSV_NAME}")
    i = rs.add_parser("import", help="the judge against the humans' verdicts of a filled review file")
    i.add_argument("run", metavar="RUN", help="a run folder (holds config.yaml)")
    i.add_argument("file", metavar="FILE", help=f"the filled {CSV_NAME}, or Label Studio's JSON export")
    why = f"calibrated mode: the precision the suggested threshold reaches (default {TARGET_PRECISION})"
    i.add_argument("--target-precision", type=float, default=TARGET_PRECISION, help=why)
    i.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples ({RESAMPLES})")
    i.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    i.add_argument(
        "--export", help=f"the {EXPORT_NAME} that wrote FILE (default RUN/{REVIEW_DIR}/{EXPORT_NAME})"
    )


def _print_export(result: ReviewSet, run_dir: str | Path) -> None:
    from rich.table import Table as RichTable

    from kun_hpc.core.console import console

    out = console()
    table = RichTable(title=f"review set: {len(result.rows)} records of stage {result.stage}")
    for col in ("stratum (corpus/decision)", "records", "drawn"):
        table.add_column(col, justify="left" if col.startswith("stratum") else "right")
    for s, size in result.sizes.items():
        table.add_row(s, f"{size:,}", f"{result.drawn[s]:,}")
    out.print(table)
    folder = result.files[0].parent
    default = folder.resolve() == (Path(run_dir) / REVIEW_DIR).resolve()
    export = "" if default else f" --export {folder / EXPORT_NAME}"
    print(
        f"kun-hpc review: wrote {', '.join(p.name for p in result.files)} in {folder} (review set "
        f"{result.review_set}, showing {', '.join(result.fields)}); fill {HUMAN} (好 or 差) in the CSV or "
        "label the tasks in Label Studio (docs/commands.md#review), then "
        f"`kun-hpc review import RUN FILE{export}`",
        file=sys.stderr,
    )


def _print_import(result: dict, run_dir: Path) -> None:
    from rich.markup import escape
    from rich.table import Table as RichTable

    from kun_hpc.core.console import console

    out = console()
    for t in (confusion_table(result), reason_table(result)):
        table = RichTable(title=t.title)
        for h in t.header:
            table.add_column(h, justify="left" if h in ("", "stage's decision") else "right")
        for row in t.rows:
            table.add_row(*row)
        out.print(table)
    for line in summary_lines(result):
        out.print(escape(line.replace("`", "")))
    print(
        f"kun-hpc review: wrote {run_dir / REVIEW_DIR / AGREEMENT_NAME}; the next `kun-hpc merge {run_dir}` "
        "puts it in the report and the card (cheap: the merge's finished phases are not redone)",
        file=sys.stderr,
    )


def main(ns: argparse.Namespace) -> int:
    try:
        if ns.review_command == "export":
            _print_export(export_review(ns.run, ns.stage, ns.n, ns.seed, ns.out, ns.force), ns.run)
        else:
            result = import_review(ns.run, ns.file, ns.target_precision, ns.resamples, ns.seed, ns.export)
            _print_import(result, Path(ns.run))
    except (ReviewError, ConfigError) as e:
        print(f"kun-hpc review: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an unreadable file or a folder it cannot write: a message, not a traceback
        print(f"kun-hpc review: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
