"""The funnel report and the dataset card of a merge.

The funnel reads only what the steps committed: shard manifests, the raw dedup's, the stages', the
merge-decontaminate and the merge dedups' markers (counted by :func:`kun_hpc.cluster.funnel.funnel_row`, the
same counting ``kun-hpc status`` prints), and the assemble markers for the dataset itself. The quality
measures (:func:`kun_hpc.quality.report.sections`) are rendered generically, whatever they are.

``report/``: ``report.json`` holds everything as data; ``report.md`` and ``report.html`` show it to a person,
with PNG plots (:mod:`kun_hpc.quality.plots`) beside ``report.md`` and embedded in ``report.html`` (data:
URIs), so the HTML file alone works wherever it is copied. Both show a few sample records per step and per
reject reason, read from the first lines of the shards that hold them.

``dataset/``: the card (``README.md``, Hugging Face dataset card) and a copy of the report (md, html, PNG) in
``dataset/report/``, so every link of the card stays inside the dataset folder. Neither the card nor the md
and html reports show a local absolute path (:func:`strip_local_paths`); ``report.json`` keeps them.
docs/report.md describes every part.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from omegaconf import DictConfig, OmegaConf

from kun_hpc.cluster.funnel import corpus_of, funnel_row, stage_markers
from kun_hpc.core.counts import Counts
from kun_hpc.inspect_run import clip
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.layout import dedup_raw_dir, shard_root, stage_dir, stage_key
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import MANIFEST, iter_shard_lines, read_manifest
from kun_hpc.merge.assemble import LENGTH_BINS, PAIR_FIELDS, SCORE_BINS, TEXT_FIELDS, merge_dir
from kun_hpc.merge.decontaminate import PHASE as DECONTAMINATE
from kun_hpc.merge.dedup import dedup_stats
from kun_hpc.merge.raw import PHASE as RAW_PHASE
from kun_hpc.merge.raw import raw_job
from kun_hpc.quality import plots
from kun_hpc.quality import report as quality
from kun_hpc.quality.section import QualityContext, Section, Table

if TYPE_CHECKING:
    from kun_hpc.merge.assemble import MergeResult

SAMPLE_CHARS = 120  # a sample record's instruction, answer, text and reject detail are cut to this
SAMPLE_FIELDS = ("instruction", "answer", "text")


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class Step:
    """A funnel step that commits markers: its name, its output folder (kept shards at ``root/<rel>``,
    rejected ones at ``root/rejected/<rel>``), its done markers and its number of units."""

    name: str
    root: Path
    markers: list[dict]
    units: int
    samples_kept: bool = False  # show kept records too (the pipeline stages)


def marker_steps(cfg: DictConfig, result: MergeResult) -> list[Step]:
    """The steps between the shards and the dataset, in order: ``dedup-raw`` (with ``dedup.raw``), each
    stage of ``pipeline.stages``, ``merge-decontaminate`` (when it ran) and each ``merge-dedup-<key>``."""
    steps = []
    if cfg.dedup.raw:
        groups = -(-len(raw_job(cfg).inputs) // cfg.dedup.shards_per_task)
        phase = f"{RAW_PHASE}.apply"
        markers = [read_marker(cfg.run.dir, phase, f"{phase}-{g:05d}") for g in range(groups)]
        steps.append(Step(RAW_PHASE, dedup_raw_dir(cfg), [m for m in markers if m], groups))
    for stage, markers, units in stage_markers(cfg):
        steps.append(Step(stage, stage_dir(cfg, stage), markers, units, True))
    if result.decontaminate:
        root = merge_dir(cfg) / "decontaminate"  # as decontaminate_phase writes it
        steps.append(Step(DECONTAMINATE, root, result.decontaminate, len(result.decontaminate)))
    for key, markers in result.dedup:
        steps.append(Step(f"merge-dedup-{key}", merge_dir(cfg) / f"dedup-{key}", markers, len(markers)))
    return steps


def dataset_counts(result: MergeResult) -> dict:
    """Rows, non-empty shards, rows by corpus and the summed length / score histograms of the dataset
    (:data:`~kun_hpc.merge.assemble.LENGTH_BINS`, :data:`~kun_hpc.merge.assemble.SCORE_BINS`)."""
    by_corpus: Counter[str] = Counter()
    hist: dict[str, np.ndarray] = {}
    for m in result.assemble:
        by_corpus.update(m["by_corpus"])
        for k, v in m["histograms"].items():
            hist[k] = hist.get(k, 0) + np.asarray(v)
    return {
        "kind": result.inputs.kind,
        "rows": result.rows,
        "shards": sum(1 for m in result.assemble for s in m["shards"] if s["rows"]),
        "by_corpus": dict(sorted(by_corpus.items())),
        "histograms": {k: v.tolist() for k, v in hist.items()},
    }


def shard_row(cfg: DictConfig) -> dict:
    """The ``shard`` step from each corpus's manifest: records read, written, quarantined by reason."""
    root = shard_root(cfg)
    total, by_corpus = Counts(), {}
    for c in cfg.corpora:
        if not (root / c.name / MANIFEST).is_file():
            continue
        counts = Counts.from_shard_marker(read_manifest(root / c.name))
        total += counts
        by_corpus[c.name] = {"in": counts.in_, "out": counts.out, "rejected": dict(counts.quarantined)}
    return {"step": "shard", **total.to_dict(), "by_corpus": by_corpus}


def dedup_rows(cfg: DictConfig, result: MergeResult) -> dict[str, dict]:
    """Per dedup pass (raw, then each merge pass): candidates checked and rejected, removals by reason."""
    names = ([RAW_PHASE] if cfg.dedup.raw else []) + [f"merge-dedup-{key}" for key, _ in result.dedup]
    return {n: dedup_stats(cfg.run.dir, n, cfg.dedup.partitions) for n in names}


def funnel(cfg: DictConfig, result: MergeResult, steps: list[Step] | None = None) -> list[dict]:
    """One row per step (shard, the marker steps, dataset): ``step``, ``in``, ``out``, ``rejected`` and
    ``quarantined`` by reason, ``by_corpus``; marker steps also ``units_done`` and ``units``."""
    steps = marker_steps(cfg, result) if steps is None else steps
    rows = [shard_row(cfg), *(funnel_row(s.name, s.markers, s.units) for s in steps)]
    ds = dataset_counts(result)
    by_corpus = {c: {"in": n, "out": n, "rejected": {}} for c, n in ds["by_corpus"].items()}
    rows.append({"step": "dataset", "in": ds["rows"], "out": ds["rows"], "rejected": {}, "quarantined": {},
                 "by_corpus": by_corpus})  # fmt: skip
    return rows


def keep_percent(row: dict) -> str:
    """``out / in`` of a funnel row as a percentage with one decimal (``-`` when nothing came in)."""
    return f"{100 * row['out'] / row['in']:.1f}%" if row["in"] else "-"


# ---------------------------------------------------------------------------------------------- samples
def _first_records(path: str | Path, n: int) -> Iterator[dict]:
    """The first ``n`` records of a shard (ValueError naming the file and line for one that is no JSON)."""
    if n <= 0:
        return
    for i, line in enumerate(iter_shard_lines(path), 1):
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i}: not a JSON record ({e})") from None
        if i >= n:
            return


def sample_row(record: dict) -> dict:
    """What the report shows of a record: id, corpus, the instruction / answer / text and the reject
    detail, each cut to :data:`SAMPLE_CHARS` characters (saying how many were cut)."""
    row = {"id": str(record.get("id", "")), "corpus": str(record.get("corpus", ""))}
    for f in SAMPLE_FIELDS:
        if isinstance(record.get(f), str):
            row[f] = clip(record[f], SAMPLE_CHARS)
    reject = record.get("reject")
    if isinstance(reject, dict):
        row["detail"] = clip(strip_local_paths(str(reject.get("detail") or "")), SAMPLE_CHARS)
    return row


def step_samples(step: Step, n: int) -> dict:
    """Up to ``n`` kept records (pipeline stages: the first records of the first non-empty output shard of
    each corpus) and up to ``n`` rejected records per reason of ``step``, as :func:`sample_row` dicts:
    ``{"kept": [...], "rejected": {reason: [...]}}``.

    Cheap at any scale: a shard is opened only when its marker entry counts what is still missing (kept
    records, or rejected lines of a reason not yet sampled), and read only until that is found.
    """
    kept: list[dict] = []
    if step.samples_kept and n > 0:
        firsts: dict[str, str] = {}
        for m in step.markers:
            for s in m.get("shards", []):
                if s["out"]:
                    firsts.setdefault(corpus_of(s["output"]), s["output"])
        per = -(-n // max(len(firsts), 1))
        kept = [sample_row(r) for path in firsts.values() for r in _first_records(path, per)][:n]
    rejected: dict[str, list[dict]] = {}

    def missing(reasons: dict) -> bool:
        return any(c and len(rejected.get(r, [])) < n for r, c in reasons.items())

    for m in step.markers:
        for s in m.get("shards", []):
            reasons = s.get("units", s)["rejected"]  # a stage's rejected file holds units (docs/filter.md)
            if not missing(reasons):
                continue
            path = step.root / "rejected" / Path(s["output"]).relative_to(step.root)
            for i, line in enumerate(iter_shard_lines(path), 1):
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {i}: not a JSON record ({e})") from None
                got = rejected.setdefault(str(rec.get("reject", {}).get("reason", "?")), [])
                if len(got) < n:
                    got.append(sample_row(rec))
                if not missing(reasons):
                    break
    return {"kept": kept, "rejected": dict(sorted(rejected.items()))}


# ------------------------------------------------------------------------------------------------ plots
def _plots(folder: Path, cfg: DictConfig, rows: list[dict], ds: dict) -> list[str]:
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


# ----------------------------------------------------------------------------------------------- report
DEDUP_NOTE = (
    "Candidates are pairs that share an LSH band key or an exact key; each was checked (once in every "
    "partition where it shares a key, so a pair may count more than once): a near duplicate has character "
    "{ngram}-gram Jaccard >= {threshold} and the same numbers, words and symbols (two long texts: sequences "
    "alike to a ratio >= {token_threshold}). Verified pairs: distinct. Clusters kept apart: a cluster that "
    "kept more than one record, because not all of its records were similar to each other."
)
STYLE = """
body{font-family:system-ui,sans-serif;max-width:80rem;margin:1.5rem auto;padding:0 1rem;color:#222;
line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;margin-top:2rem}
nav{background:#f7f7f7;border:1px solid #ddd;padding:.3rem 1.2rem;display:inline-block}
nav ul{margin:.2rem 0;padding-left:1.2rem}
table{border-collapse:collapse;margin:.4rem 0 1.2rem;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;vertical-align:top;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{text-align:left;font-weight:600;padding:.2rem 0}
table.samples td{max-width:30rem;overflow-wrap:anywhere}table.samples td:nth-child(2){white-space:nowrap}
figure{margin:.5rem 0 1.5rem}img{max-width:100%;height:auto;border:1px solid #eee}
code{background:#f3f3f3;padding:0 .2rem}.note{color:#555;font-size:.9rem}
"""
FUNNEL_NOTE = "Records in and out of every step, by reason; `keep %`: out / in."
SAMPLES_NOTE = (
    "Up to {n} records per step and per reject reason (`merge.quality.samples_per_reason`), the first ones "
    "of the shards holding them; fields cut to {chars} characters. More: `kun-hpc inspect RUN STAGE --reason "
    "REASON` (docs/inspect.md)."
)
_NUMBER = re.compile(r"-?[\d,]+(\.\d+)?%?")
_PART = r"[^\s/`'\"|()\[\]<>{},;]+"
_LOCAL_PATH = re.compile(rf"(?<![\w.:/~+<\-])~?/{_PART}(?:/{_PART})+/?")


def strip_local_paths(text: str) -> str:
    """``text`` with every absolute local path of two parts or more (``/a/b/c``, ``~/b/c``) replaced by its
    last part (``c``); relative paths, URLs, ``1/2``, ``and/or`` and HTML end tags stay.
    What goes into the card and the md/html reports passes here."""

    def last_part(m: re.Match) -> str:
        path = m.group(0).rstrip(".")  # a sentence's full stop stays
        return Path(path.rstrip("/")).name + m.group(0)[len(path) :]

    return _LOCAL_PATH.sub(last_part, text)


@dataclass
class Part:
    """One block of the report, rendered to Markdown and to HTML alike: a heading (``level`` 2 or 3) with
    paragraphs, tables (each with its HTML id) and plots."""

    title: str
    anchor: str
    level: int = 2
    lines: Sequence[str] = ()
    tables: Sequence[tuple[str, Table]] = ()
    plots: Sequence[str] = ()
    css: str = ""  # class of its tables
    clean: bool = True  # pass its text through strip_local_paths (not record samples: they are data)


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


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_md_cell(str(c)) for c in r) + " |" for r in rows]


def _md(part: Part) -> list[str]:
    text = strip_local_paths if part.clean else str
    out = ["#" * part.level + " " + text(part.title), ""]
    for line in part.lines:
        out += [text(line), ""]
    for _, t in part.tables:
        if t.title:
            out += [f"**{_md_cell(text(t.title))}**", ""]
        cells = [[text(str(c)) for c in r] for r in t.rows]
        out += [*_md_table([text(h) for h in t.header], cells), ""]
    out += [f"![{p}]({p})\n" for p in part.plots]
    return out


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def _inline_html(text: str) -> str:
    """Escaped ``text`` with Markdown's inline `code` and **bold** (what a Section's lines use) as tags."""
    out, at = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[at : m.start()]))
        out.append(f"<code>{html.escape(m[1])}</code>" if m[1] else f"<strong>{html.escape(m[2])}</strong>")
        at = m.end()
    return "".join(out) + html.escape(text[at:])


def _html_table(table: Table, anchor: str, css: str = "", clean: bool = False) -> str:
    text = strip_local_paths if clean else str
    th = "".join(f"<th>{html.escape(text(h))}</th>" for h in table.header)
    trs = []
    for r in table.rows:
        tds = []
        for c in map(str, r):
            num = ' class="num"' if _NUMBER.fullmatch(c) else ""
            tds.append(f"<td{num}>{_inline_html(text(c))}</td>")
        trs.append("<tr>" + "".join(tds) + "</tr>")
    cap = f"<caption>{_inline_html(text(table.title))}</caption>" if table.title else ""
    cls = f' class="{css}"' if css else ""
    return f'<table id="{anchor}"{cls}>{cap}<thead><tr>{th}</tr></thead><tbody>{"".join(trs)}</tbody></table>'


def _html(part: Part, folder: Path) -> str:
    text = strip_local_paths if part.clean else str
    h = f"h{part.level}"
    out = [f'<{h} id="{part.anchor}">{html.escape(text(part.title))}</{h}>']
    out += [f"<p>{_inline_html(text(line))}</p>" for line in part.lines]
    out += [_html_table(t, anchor, part.css, part.clean) for anchor, t in part.tables]
    for p in part.plots:
        data = base64.b64encode((folder / p).read_bytes()).decode()
        alt = html.escape(p)
        out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"></figure>')
    return "\n".join(out)


def _toc(parts: list[Part]) -> str:
    items, open_sub = [], False
    for p in parts:
        link = f'<a href="#{p.anchor}">{html.escape(strip_local_paths(p.title))}</a>'
        if p.level == 3 and not open_sub:
            items.append("<ul>")
            open_sub = True
        elif p.level == 2 and open_sub:
            items.append("</ul>")
            open_sub = False
        items.append(f"<li>{link}</li>")
    return (
        "<nav><strong>Contents</strong><ul>" + "".join(items) + ("</ul>" if open_sub else "") + "</ul></nav>"
    )


def write_report(cfg: DictConfig, result: MergeResult) -> dict:
    """Write ``report.json``, ``report.md``, ``report.html`` and their PNG plots into ``result.report``,
    copy md, html and PNG into ``<dataset>/report/``, and write the dataset card with the quality summary
    (:func:`write_card`). Returns the report as data (what ``report.json`` holds)."""
    folder = result.report
    folder.mkdir(parents=True, exist_ok=True)
    steps = marker_steps(cfg, result)
    rows = funnel(cfg, result, steps)
    ds = dataset_counts(result)
    ctx = QualityContext(cfg, folder, Path(result.dataset), ds["kind"], result.assemble, result.dedup, rows)
    sections = quality.sections(ctx)
    own_plots = _plots(folder, cfg, rows, ds)
    dedup = dedup_rows(cfg, result)
    n = int(cfg.merge.quality.samples_per_reason)
    samples = {s.name: step_samples(s, n) for s in steps}
    report = {"run": str(cfg.run.dir), "dataset": ds, "funnel": rows, "dedup": dedup,
              "missing": result.inputs.missing, "plots": own_plots,
              "quality": {s.key: s.data for s in sections}, "samples": samples}  # fmt: skip
    atomic_write_bytes(folder / "report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2))

    parts = _report_parts(cfg, rows, dedup, own_plots, sections, steps, samples)
    head = [f"Dataset: {ds['rows']:,} records ({ds['kind']}) in {ds['shards']} shards."]
    if result.inputs.missing:
        head.append(f"**Partial merge** (allow_partial): {len(result.inputs.missing)} units missing: "
                    + ", ".join(result.inputs.missing))  # fmt: skip
    title = f"Merge report: {cfg.run.name}"
    md = [f"# {title}", "", *(p for line in head for p in (line, ""))]
    md += [line for p in parts for line in _md(p)]
    atomic_write_bytes(folder / "report.md", ("\n".join(md).rstrip() + "\n").encode())
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{_inline_html(x)}</p>" for x in head), _toc(parts)]
    body += [_html(p, folder) for p in parts]
    head_html = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
    page = f'<!doctype html>\n<html lang="zh"><head>{head_html}</head><body>\n' + "\n".join(body)
    page += "\n</body></html>\n"
    atomic_write_bytes(folder / "report.html", page.encode())

    copy = Path(result.dataset) / "report"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for name in ["report.md", "report.html", *own_plots, *(p for s in sections for p in s.plots)]:
        shutil.copyfile(folder / name, copy / name)
    write_card(cfg, result, sections)
    return report


def _report_parts(
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


# ------------------------------------------------------------------------------------------------- card
# Hugging Face's size_categories values (huggingface_hub RepoCard docs: DatasetCardData.size_categories)
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]  # fmt: skip
CITATION = """\
@misc{zheng2024kun,
  title         = {Kun: Answer Polishment for Chinese Self-Alignment with Instruction Back-Translation},
  author        = {Zheng, Tianyu and Guo, Shuyue and Qu, Xingwei and Guo, Jiawei and Du, Xinrun and Jia, Qi
                   and Lin, Chenghua and Huang, Wenhao and Fu, Jie and Zhang, Ge},
  year          = {2024},
  eprint        = {2401.06477},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
  url           = {https://arxiv.org/abs/2401.06477}
}

@misc{li2023humpback,
  title         = {Self-Alignment with Instruction Backtranslation},
  author        = {Li, Xian and Yu, Ping and Zhou, Chunting and Schick, Timo and Levy, Omer
                   and Zettlemoyer, Luke and Weston, Jason and Lewis, Mike},
  year          = {2023},
  eprint        = {2308.06259},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
  url           = {https://arxiv.org/abs/2308.06259}
}"""


def size_category(rows: int) -> str:
    """The Hugging Face ``size_categories`` value of a dataset of ``rows`` examples."""
    return next((cat for limit, cat in SIZE_CATEGORIES if rows < limit), "n>1T")


def model_name(path: str | None, run_dir: str | Path) -> str | None:
    """A model as the card names it: its folder relative to the run folder when it is inside it
    (``train/chat/model``), else its folder name; never an absolute path."""
    if not path:
        return path
    p = Path(path)
    return p.relative_to(run_dir).as_posix() if p.is_relative_to(run_dir) else p.name


def card_settings(cfg: DictConfig) -> dict:
    """The ``dedup`` and ``merge`` sections as the card shows them: without ``merge.output`` (where this
    copy was written), every path by its last part (benchmark files by name)."""
    settings = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("dedup", "merge")}
    settings["merge"].pop("output", None)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return strip_local_paths(v) if isinstance(v, str) else v

    return clean(settings)


def write_card(cfg: DictConfig, result: MergeResult, sections: Sequence[Section] = ()) -> None:
    """Write the dataset card ``<dataset>/README.md``: the Hugging Face YAML header (data files, ``language``,
    ``task_categories``, ``pretty_name``, ``size_categories``, ``license: other``), what the dataset is,
    sources and licences, fields, the quality summary (each section's ``card`` lines), config, links to
    ``report/`` and the citations. No local absolute path: :func:`strip_local_paths` runs over the whole
    text, after models and settings were named without them."""
    ds = dataset_counts(result)
    pairs = ds["kind"] == "pairs"
    fmt = "parquet/*.parquet" if cfg.merge.parquet else "jsonl/*.jsonl.zst"
    licences = {c.name: c.license or "unknown" for c in cfg.corpora}
    fields = PAIR_FIELDS if pairs else TEXT_FIELDS
    sources = [[c, licences.get(c, "unknown"), f"{n:,}"] for c, n in ds["by_corpus"].items()]
    models = {s: model_name(OmegaConf.select(cfg, f"{s}.engine.model", throw_on_missing=False), cfg.run.dir)
              for s in ("label", "point", "answer") if s in cfg.pipeline.stages}  # fmt: skip
    tasks = ["text-generation", "question-answering"] if pairs else ["text-generation"]
    what = "Chinese instruction/output pairs" if pairs else "Chinese texts"
    pretty = f"{cfg.run.name}: {what} (kun-hpc)"
    config_sha = Path(cfg.run.dir) / "config.sha256"
    config_hash = config_sha.read_text().split()[0] if config_sha.is_file() else "unknown"
    quality_lines: list[str] = []
    for s in sections:
        if s.card:
            quality_lines += [f"### {s.title}", "", *(p for line in s.card for p in (line, ""))]
    if not quality_lines:
        quality_lines = ["No quality measure ran (`merge.quality.enabled`) or had anything to say.", ""]
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {fmt}",
        "language:",
        "- zh",
        "task_categories:",
        *(f"- {t}" for t in tasks),
        f"pretty_name: {orjson.dumps(pretty).decode()}",
        "size_categories:",
        f"- {size_category(ds['rows'])}",
        "license: other",
        "---",
        f"# {cfg.run.name}",
        "",
        f"{ds['rows']:,} {'instruction/output pairs' if pairs else 'texts'} made by kun-hpc "
        f"(stages: {', '.join(cfg.pipeline.stages) or 'none'}), deduplicated across all corpora "
        "(exact and verified MinHash near-duplicates"
        f"{', raw units before the stages' if cfg.dedup.raw else ''}; "
        f"final passes by {', '.join(k for k, _ in result.dedup) or 'nothing'})"
        + (
            f", decontaminated against {', '.join(Path(b).name for b in cfg.merge.decontaminate.benchmarks)} "
            f"(a shared character {cfg.merge.decontaminate.ngram}-gram removes a record)."
            if result.decontaminate
            else "."
        ),
        "",
        'Load with `datasets.load_dataset("parquet", data_files="parquet/*.parquet")` or '
        '`load_dataset("json", data_files="jsonl/*.jsonl.zst")`.',
        "",
        "## Sources and licences",
        "",
        *_md_table(["corpus", "licence", "records"], sources),
        "",
        "## Fields",
        "",
        f"`{'`, `'.join(fields)}`; `prov` is a JSON string: per stage, the model, sampling and config hash "
        "that made the record. `score` is Point's calibrated score (null when not computed). `dup_count` is "
        "how many copies of the record the dedup passes removed in its favour (0: none), `dup_corpora` "
        "the corpora those copies came from: weigh or audit by them."
        + (
            " `lcs_recall` / `lcs_precision`: the share of the unit's characters the output keeps in order / "
            "of the output's characters taken from the unit in order; `novel_share`: the share of the "
            "output's character n-grams not in the unit; `flags`: `drift` (mostly new text), `copy` (the "
            "unit nearly verbatim), `refusal` (null values: no unit to compare)."
            if pairs
            else ""
        ),
        "",
        "## Quality summary",
        "",
        *quality_lines,
        "The funnel (records in and out of every step, by reason and corpus), the quality measures and "
        "sample records of every step and reject reason: [report/report.md](report/report.md) "
        "([HTML, one file](report/report.html)).",
        "",
        "## Config",
        "",
        f"Run `{cfg.run.name}` (config sha256 `{config_hash}`), models {models or 'none'}; local paths are "
        "shown by their last part.",
        "",
        "```json",
        orjson.dumps(card_settings(cfg), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(),
        "```",
        "",
        "## Citation",
        "",
        "kun-hpc implements Kun (answer polishment), built on Humpback's instruction back-translation:",
        "",
        "```bibtex",
        CITATION,
        "```",
    ]
    if result.inputs.missing:
        missing = ", ".join(result.inputs.missing)
        lines += ["", f"**Partial**: built from the complete groups only; missing: {missing}"]
    text = strip_local_paths("\n".join(lines) + "\n")
    atomic_write_bytes(Path(result.dataset) / "README.md", text.encode())
