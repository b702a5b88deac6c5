"""What the report shows, in order: the funnel, records out by corpus, the dedup table, its own plots
(:mod:`kun_hpc.quality.plots`), the quality sections (rendered generically, whatever they are) and the
sample records of every step, as :class:`~kun_hpc.report.render.Part` blocks."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.io.layout import stage_key
from kun_hpc.merge.assemble import LENGTH_BINS, SCORE_BINS
from kun_hpc.quality import plots
from kun_hpc.quality.section import Section, Table
from kun_hpc.report.funnel import Step, keep_percent
from kun_hpc.report.render import Part
from kun_hpc.report.samples import SAMPLE_CHARS, SAMPLE_FIELDS

DEDUP_NOTE = (
    "Candidates are pairs that share an LSH band key or an exact key; each was checked (once in every "
    "partition where it shares a key, so a pair may count more than once): a near duplicate has character "
    "{ngram}-gram Jaccard >= {threshold} and the same numbers, words and symbols (two long texts: sequences "
    "alike to a ratio >= {token_threshold}). Verified pairs: distinct. Clusters kept apart: a cluster that "
    "kept more than one record, because not all of its records were similar to each other."
)
FUNNEL_NOTE = "Records in and out of every step, by reason; `keep %`: out / in."
SAMPLES_NOTE = (
    "Up to {n} records per step and per reject reason (`merge.quality.samples_per_reason`), the first ones "
    "of the shards holding them; fields cut to {chars} characters. More: `kun-hpc inspect RUN STAGE --reason "
    "REASON` (docs/inspect.md)."
)


def draw_plots(folder: Path, cfg: DictConfig, rows: list[dict], ds: dict) -> list[str]:
    """funnel.png (records out of each step by corpus), lengths.png, scores.png (when scored)."""
    corpora = sorted({c for r in rows for c in r.get("by_corpus", {})})
    series = {c: [r.get("by_corpus", {}).get(c, {}).get("out", 0) for r in rows] for c in corpora}
    names = [plots.bar_chart(folder / "funnel.png", [r["step"] for r in rows], series,
                             "funnel: records out of each step, by corpus", "records out")]  # fmt: skip
    lengths = {
        k.removeprefix("length_"): v for k, v in sorted(ds["histograms"].items()) if k.startswith("length_")
    }
    if lengths:
        labels = [f"<{b}" if b < 1 << 40 else f">={LENGTH_BINS[i]}" for i, b in enumerate(LENGTH_BINS[1:])]
        names.append(plots.bar_chart(folder / "lengths.png", labels, lengths,
                                     "length distribution of the dataset", xlabel="characters"))  # fmt: skip
    scores = ds["histograms"].get("score", [])
    if sum(scores):
        point = any(stage_key(s) == "point" for s in cfg.pipeline.stages)
        calibrated = point and cfg.point.mode == "calibrated"
        mark = float(cfg.point.threshold) if calibrated else None
        title = "score distribution of the dataset"
        names.append(plots.histogram(folder / "scores.png", SCORE_BINS, scores, title, "Point score",
                                     mark=mark, mark_label="point.threshold"))  # fmt: skip
    return names


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _reasons(r: dict) -> str:
    merged = {**r.get("rejected", {}), **r.get("quarantined", {})}
    return ", ".join(f"{k}={v:,}" for k, v in sorted(merged.items())) or "-"


def _dedup_table(dedup: dict[str, dict]) -> Table:
    header = ["pass", "candidate checks", "verified pairs", "below threshold", "tokens differ",
              "duplicate_exact", "near_duplicate", "clusters", "kept apart"]  # fmt: skip
    rows = []
    for name, d in dedup.items():
        rej, rem = d["rejected"], d.get("removed", {})
        cells = [d["candidates"], d["verified"], rej.get("below_threshold", 0), rej.get("tokens_differ", 0),
                 rem.get("duplicate_exact", 0), rem.get("near_duplicate", 0), d["clusters"],
                 d["kept_apart"]]  # fmt: skip
        rows.append([name, *[f"{c:,}" for c in cells]])
    return Table(header, rows)


def _sample_table(rows: list[dict], title: str) -> Table:
    cols = ["id", "corpus", *(f for f in (*SAMPLE_FIELDS, "detail") if any(f in r for r in rows))]
    return Table(cols, [[r.get(c, "") for c in cols] for r in rows], title)


def _sample_parts(steps: list[Step], rows: list[dict], samples: dict[str, dict]) -> list[Part]:
    counts = {r["step"]: r for r in rows}
    parts = []
    for step in steps:
        got = samples[step.name]
        tables = []
        if got["kept"]:
            row = counts[step.name]
            what = f"kept: {len(got['kept'])} of {row['out']:,} records out"
            tables.append((f"samples-{_slug(step.name)}-kept", _sample_table(got["kept"], what)))
        for reason, recs in got["rejected"].items():
            what = f"rejected as {reason}: {len(recs)} shown"
            tables.append((f"samples-{_slug(step.name)}-{_slug(reason)}", _sample_table(recs, what)))
        if tables:
            anchor = f"samples-{_slug(step.name)}"
            parts.append(Part(step.name, anchor, 3, tables=tables, css="samples", clean=False))
    return parts


def _quality_parts(sections: list[Section]) -> list[Part]:
    parts = []
    for s in sections:
        tables = [(f"quality-{_slug(s.key)}-{i}", t) for i, t in enumerate(s.tables)]
        parts.append(Part(s.title, f"quality-{_slug(s.key)}", 3, s.lines, tables, s.plots))
    return parts


def report_parts(
    cfg: DictConfig,
    rows: list[dict],
    dedup: dict[str, dict],
    own_plots: list[str],
    sections: list[Section],
    steps: list[Step],
    samples: dict[str, dict],
) -> list[Part]:
    """The report's blocks in order: funnel, by corpus, dedup, plots, quality (one block per section),
    samples (one block per step)."""
    cells = [[r["step"], f"{r['in']:,}", f"{r['out']:,}", keep_percent(r), _reasons(r)] for r in rows]
    funnel_table = Table(["step", "in", "out", "keep %", "rejected + quarantined by reason"], cells)
    corpora = sorted({c for r in rows for c in r.get("by_corpus", {})})
    cells = [[r["step"], *(f"{r['by_corpus'].get(c, {}).get('out', 0):,}" for c in corpora)] for r in rows]
    parts = [
        Part("Funnel", "funnel", lines=[FUNNEL_NOTE], tables=[("funnel-table", funnel_table)]),
        Part(
            "Records out by corpus",
            "by-corpus",
            tables=[("by-corpus-table", Table(["step", *corpora], cells))],
        ),
    ]
    dedup_table = _dedup_table(dedup)
    if dedup_table.rows:
        note = DEDUP_NOTE.format(**cfg.dedup)
        parts.append(Part("Dedup", "dedup", lines=[note], tables=[("dedup-table", dedup_table)]))
    parts.append(Part("Plots", "plots", plots=own_plots))
    none = [] if sections else ["No quality measure ran (`merge.quality.enabled`) or had anything to say."]
    meaning = "What each number means: docs/quality.md of kun-hpc."
    parts.append(Part("Quality", "quality", lines=[*none, meaning]))
    parts += _quality_parts(sections)
    note = SAMPLES_NOTE.format(n=cfg.merge.quality.samples_per_reason, chars=SAMPLE_CHARS)
    parts.append(Part("Samples", "samples", lines=[note]))
    return parts + _sample_parts(steps, rows, samples)
