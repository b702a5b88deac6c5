"""The "Decontamination" section of the merge report: what the ``merge-decontaminate`` phase
(:mod:`kun_hpc.merge.decontaminate`) checked and rejected, per benchmark file and per field."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson

from kun_hpc.cluster.phases import phase_markers as latest_phase_markers
from kun_hpc.core.counts import add_stats
from kun_hpc.merge.decontaminate import PHASE, REASON, index_dir, record_fields
from kun_hpc.quality.section import QualityContext, Section, Table

SHOWN_FILES = 20  # benchmark files in the report's table (the most rejections first)


def phase_markers(run_dir: str | Path) -> list[dict]:
    """The markers of the latest ``merge-decontaminate`` run (those sharing the config hash of the marker
    that ended last; markers of an earlier merge of other inputs are left out); [] when none."""
    return latest_phase_markers(run_dir, PHASE)


def _groups(names: list[str]) -> str:
    """``cmmlu (67 files), mmlu.jsonl``: benchmark names by the folder they were named by."""
    tops = Counter(n.split("/", 1)[0] + ("/" if "/" in n else "") for n in names)
    return ", ".join(f"{t[:-1]} ({c} file{'s' * (c > 1)})" if t.endswith("/") else t for t, c in tops.items())


def section(ctx: QualityContext) -> Section | None:
    """The "Decontamination" section: records checked, rejected as contaminated, per benchmark file and per
    field, what the index holds (texts too short to index, skipped rows); None when no benchmark is set or
    the phase has not run."""
    if not ctx.cfg.merge.decontaminate.benchmarks:
        return None
    markers = phase_markers(ctx.run_dir)
    if not markers:
        return None
    info = orjson.loads((index_dir(ctx.cfg) / "index.json").read_bytes())
    n = info["ngram"]
    checked = sum(m["in"] for m in markers)
    rejected = sum(m["rejected"].get(REASON, 0) for m in markers)
    per: dict = {}
    for m in markers:
        per = add_stats(per, m.get("benchmarks", {}))
    files = info["files"]
    what = "pairs" if ctx.kind == "pairs" else "records"
    share = f" ({rejected / checked:.2%})" if checked else ""
    short = sum(f["short"] for f in files)
    skipped = sum(sum(f["problems"].values()) for f in files)
    indexed = sum(f["indexed"] for f in files)
    lines = [
        f"{checked:,} {what} checked against {len(files)} benchmark files ({indexed:,} texts indexed as "
        f"{info['ngrams']:,} distinct character {n}-grams): **{rejected:,} rejected as `{REASON}`**{share}. "
        f"A record is contaminated when its {' or '.join(record_fields(ctx.kind))} shares one {n}-gram "
        "(normalised: no whitespace or punctuation) with a benchmark question or correct answer.",
    ]
    if short:
        lines.append(
            f"{short:,} benchmark texts are shorter than {n} characters and were not indexed (a short "
            "answer would match every record that mentions it): they cannot be detected here."
        )
    if skipped:
        reasons = Counter()
        for f in files:
            reasons.update(f["problems"])
        lines.append(
            f"Benchmark rows or fields skipped: {skipped:,} ("
            + ", ".join(f"{r} {c:,}" for r, c in reasons.most_common())
            + ")."
        )
    record_cols = list(record_fields(ctx.kind))
    bench_cols = [f for f in info["fields"] if any(f in p.get("benchmark_fields", {}) for p in per.values())]
    order = sorted(files, key=lambda f: (-per.get(f["name"], {}).get("rejected", 0), f["name"]))
    rows = []
    for f in order[:SHOWN_FILES]:
        p = per.get(f["name"], {})
        rows.append(
            [
                f["name"],
                f["layout"],
                f"{f['rows']:,}",
                f"{f['indexed']:,}",
                f"{f['short']:,}",
                f"{p.get('rejected', 0):,}",
                *(f"{p.get('fields', {}).get(c, 0):,}" for c in record_cols),
                *(f"{p.get('benchmark_fields', {}).get(c, 0):,}" for c in bench_cols),
            ]
        )
    header = [
        "benchmark file",
        "layout",
        "rows",
        "texts indexed",
        "too short",
        f"{what} rejected",
        *(f"by {c}" for c in record_cols),
        *(f"matched {c}" for c in bench_cols),
    ]
    title = "Per benchmark file" + (
        f" (the {SHOWN_FILES} with the most rejections)" if len(files) > SHOWN_FILES else ""
    )
    card = [
        f"Decontaminated against {_groups([f['name'] for f in files])} (character {n}-grams): "
        f"{rejected:,} {what} removed."
    ]
    data = {"ngram": n, "checked": checked, "rejected": rejected, "benchmarks": per, "index": info}
    return Section("decontamination", "Decontamination", data, lines, [Table(header, rows, title)], card=card)
