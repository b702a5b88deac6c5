"""``kun-hpc inspect RUN STAGE``: a seeded sample of the records a stage kept, or rejected (for one reason or
any), each shown beside the unit it came from -- what a user reads to tune thresholds and word lists.

The left column is the unit's text (``text``), the right one what the stage added or decided: instruction,
verdict, score, answer, or the rejection's reason and detail (every field but the text and the bookkeeping).
``STAGE`` is a name of the run's ``pipeline.stages``, or ``shard`` for the raw shards. The sample is a
reservoir over every matching line of the stage's files (sorted by path), so memory stays bounded by ``-n``
on stages of any size and a seed gives the same sample every time.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from omegaconf import DictConfig

from kun_hpc.config import load_run
from kun_hpc.io.layout import dedup_raw_dir, shard_root, stage_dir, stage_key
from kun_hpc.io.shards import iter_shard_lines, list_shards

SHARD = "shard"
ANY = "any"  # --reason any: every rejected record
SIDE_FIELDS = ("text", "prov", "reject")  # shown apart from "what the stage added"
# where the record came from: the id and native source in the header, the rest only in --json
HEADER_FIELDS = ("id", "src", "parent", "pos", "corpus", "meta")


# the fields each built-in stage writes (shown first); fields of earlier stages follow, dimmed
STAGE_FIELDS = {
    "filter": ("tokens", "span"),
    "label": ("instruction",),
    "point": ("verdict", "score"),
    "answer": ("answer",),
    "rules": ("instruction", "answer"),
}


class InspectError(ValueError):
    """The run, stage, corpus or reason asked for does not exist; the message says what does."""


@dataclass
class Sampled:
    path: Path
    line: int  # 1-based line in the (decompressed) shard
    record: dict[str, Any]

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


@dataclass
class Inspection:
    run_dir: Path
    stage: str
    root: Path  # the stage's folder
    rejected: bool
    reason: str | None
    corpus: str | None
    matched: int  # lines that matched (kept lines, or rejected lines with the reason)
    reasons: Counter  # rejected lines by reason (when the rejected files were read)
    samples: list[Sampled]


def reservoir(items: Iterator[Any], n: int, rng: random.Random) -> tuple[list[Any], int]:
    """A uniform sample of ``n`` items of a stream (Algorithm R) and the stream's length."""
    kept: list[Any] = []
    seen = 0
    for item in items:
        seen += 1
        if len(kept) < n:
            kept.append(item)
        else:
            j = rng.randrange(seen)
            if j < n:
                kept[j] = item
    return kept, seen


def stage_files(root: Path, kind: str, corpus: str | None) -> list[Path]:
    """Output shards (``kept``) or rejected files of a stage folder, optionally of one corpus."""
    base = root / "rejected" if kind == "rejected" else root
    out = []
    for p in list_shards(base):
        parts = p.relative_to(base).parts
        if kind == "kept" and parts[0] in ("rejected", "quarantine"):
            continue
        if corpus is None or parts[0] == corpus:
            out.append(p)
    return out


def _lines(files: list[Path]) -> Iterator[tuple[Path, int, bytes]]:
    for path in files:
        for i, line in enumerate(iter_shard_lines(path), 1):
            yield path, i, line


def dedup_roots(cfg: DictConfig) -> dict[str, Path]:
    """The dedup passes and the decontamination of a run, by the name the funnel gives them: ``dedup-raw``
    (with ``dedup.raw``), ``merge-decontaminate`` and each ``merge-dedup-<key>`` the merge has run."""
    roots = {"dedup-raw": dedup_raw_dir(cfg)} if cfg.dedup.raw else {}
    merged = Path(cfg.merge.output)
    if (merged / "decontaminate").is_dir():
        roots["merge-decontaminate"] = merged / "decontaminate"
    return roots | {f"merge-dedup-{k}": merged / f"dedup-{k}" for k in ("instruction", "pair", "text")
                    if (merged / f"dedup-{k}").is_dir()}  # fmt: skip


def inspect_stage(
    run_dir: str | Path,
    stage: str,
    *,
    reason: str | None = None,
    n: int = 5,
    seed: int = 0,
    corpus: str | None = None,
) -> Inspection:
    """Sample ``n`` records kept by ``stage`` (``reason`` None) or rejected by it (``reason``, or ``any``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise InspectError(f"{run_dir}: not a run folder (no config.yaml in it)")
    cfg: DictConfig = load_run(run_dir)
    roots = {SHARD: shard_root(cfg)} | {
        stage_key(s): stage_dir(cfg, stage_key(s)) for s in cfg.pipeline.stages
    }
    roots |= dedup_roots(cfg)
    if stage not in roots:
        raise InspectError(f"stage {stage!r} is not in this run; its stages: {', '.join(roots)}")
    corpora = [c.name for c in cfg.corpora]
    if corpus is not None and corpus not in corpora:
        raise InspectError(f"corpus {corpus!r} is not in this run; its corpora: {', '.join(corpora)}")
    if stage == SHARD and reason is not None:
        raise InspectError("the shard step rejects nothing (bad input goes to quarantine/ beside the shards)")
    root = roots[stage]
    if not root.is_dir():
        raise InspectError(f"stage {stage!r} has no output yet ({root} does not exist): see `kun-hpc status`")
    rng = random.Random(seed)
    if reason is None:
        lines = _lines(stage_files(root, "kept", corpus))
        picked, matched = reservoir(lines, n, rng)
        reasons: Counter = Counter()
    else:
        reasons = Counter()

        def matching() -> Iterator[tuple[Path, int, dict]]:
            for path, i, line in _lines(stage_files(root, "rejected", corpus)):
                row = orjson.loads(line)
                why = row.get("reject", {}).get("reason", "?")
                reasons[why] += 1
                if reason == ANY or why == reason:
                    yield path, i, row

        picked, matched = reservoir(matching(), n, rng)
        if not matched:
            known = ", ".join(f"{r} ({c:,})" for r, c in reasons.most_common()) or "none"
            raise InspectError(
                f"no record of stage {stage!r} was rejected as {reason!r}"
                + (f" in corpus {corpus!r}" if corpus else "")
                + f"; reasons found: {known}"
            )
    samples = [
        Sampled(path, i, row if isinstance(row, dict) else orjson.loads(row))
        for path, i, row in sorted(picked, key=lambda s: (s[0], s[1]))
    ]
    return Inspection(run_dir, stage, root, reason is not None, reason, corpus, matched, reasons, samples)


# -------------------------------------------------------------------------------------------- output
def clip(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, saying how many were cut."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    return f"{text[:max_chars]} … [+{len(text) - max_chars:,} chars]"


def _value(v: Any) -> str:
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def added_fields(record: dict) -> dict[str, Any]:
    """What a stage put beside the text: every field but the text, the bookkeeping and the provenance."""
    return {k: v for k, v in record.items() if k not in SIDE_FIELDS and k not in HEADER_FIELDS}


def render(result: Inspection, max_chars: int = 400, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from kun_hpc.core.console import console as default_console

    console = console or default_console()
    what = (
        f"rejected as {result.reason!r}"
        if result.reason not in (None, ANY)
        else "rejected"
        if result.rejected
        else "kept"
    )
    where = f", corpus {result.corpus}" if result.corpus else ""
    title = (
        f"{result.stage}: {len(result.samples)} of {result.matched:,} records {what}{where} "
        f"({result.run_dir})"
    )
    table = Table(title=escape(title), show_lines=True, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("unit (text)", ratio=1)
    table.add_column("rejected: reason, detail" if result.rejected else f"what {result.stage} added", ratio=1)
    for k, s in enumerate(result.samples, 1):
        r = s.record
        head = " · ".join([*(str(r[f]) for f in ("id", "src") if f in r), s.where(result.root)])
        text = clip(str(r.get("text", "")), max_chars)
        left = f"[dim]{escape(head)}[/dim]\n{escape(text)}"
        right = []
        if "reject" in r:
            rej = r["reject"]
            right.append(f"[bold red]{escape(str(rej.get('reason')))}[/bold red]")
            if rej.get("detail"):
                right.append(escape(clip(str(rej["detail"]), max_chars)))
        fields = added_fields(r)
        own = STAGE_FIELDS.get(result.stage, tuple(fields))
        for key in [*(k for k in own if k in fields), *(k for k in fields if k not in own)]:
            line = f"[bold]{escape(key)}[/bold]: {escape(clip(_value(fields[key]), max_chars))}"
            right.append(line if key in own else f"[dim]{line}[/dim]")
        table.add_row(str(k), left, "\n".join(right) or "[dim](nothing)[/dim]")
    console.print(table)
    if result.reasons:
        console.print(
            "rejected lines by reason: " + ", ".join(f"{r} {c:,}" for r, c in result.reasons.most_common())
        )


def to_json_lines(result: Inspection) -> str:
    """One JSON object a sampled record (whole, untruncated), with ``_source`` (file:line in the stage)."""
    return "".join(
        orjson.dumps({"_source": s.where(result.root), **s.record}, option=orjson.OPT_APPEND_NEWLINE).decode()
        for s in result.samples
    )


# ----------------------------------------------------------------------------------------------- CLI
HELP = "a sample of the records a stage kept or rejected, beside the unit each came from"


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("inspect", help=HELP, description=HELP)
    c.add_argument("run", metavar="RUN", help="a run folder (holds config.yaml)")
    c.add_argument("stage", metavar="STAGE", help=f"a stage of the run's pipeline.stages, or {SHARD!r}")
    c.add_argument(
        "--reason", help=f"show records rejected for this reason ({ANY!r}: for any); default: kept records"
    )
    c.add_argument("-n", type=int, default=5, help="how many records (default 5)")
    c.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    c.add_argument("--corpus", help="only this corpus")
    c.add_argument("--json", action="store_true", help="the sampled records as JSON lines, untruncated")
    c.add_argument("--max-chars", type=int, default=400, help="cut longer fields in the table (0: never)")


def main(ns: argparse.Namespace) -> int:
    if ns.n < 1:
        print("kun-hpc inspect: -n must be >= 1", file=sys.stderr)
        return 2
    try:
        result = inspect_stage(ns.run, ns.stage, reason=ns.reason, n=ns.n, seed=ns.seed, corpus=ns.corpus)
    except InspectError as e:
        print(f"kun-hpc inspect: {e}", file=sys.stderr)
        return 1
    if ns.json:
        sys.stdout.write(to_json_lines(result))
    else:
        render(result, ns.max_chars)
    return 0
