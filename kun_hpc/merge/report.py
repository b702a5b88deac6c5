"""The dataset card and the funnel report of a merge.

The funnel reads only what the steps committed: shard manifests, the raw dedup's and the merge dedups'
apply markers, and the stages' markers (counted by :func:`kun_hpc.cluster.status.funnel_row`, the same
counting ``kun-hpc status`` prints), and the assemble markers for the dataset itself. ``report.json`` holds
everything; ``report.md`` and ``report.html`` show it with PNG plots (matplotlib, Agg backend).
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
from omegaconf import DictConfig, OmegaConf

from kun_hpc.cluster.status import funnel_row, stage_funnel
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.shards import MANIFEST, read_manifest
from kun_hpc.pipeline import shard_root

if TYPE_CHECKING:
    from kun_hpc.merge.assemble import MergeResult


def dataset_counts(result: MergeResult) -> dict:
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
    root = shard_root(cfg)
    row = {"step": "shard", "in": 0, "out": 0, "rejected": {}, "quarantined": Counter(), "by_corpus": {}}
    for c in cfg.corpora:
        if not (root / c.name / MANIFEST).is_file():
            continue
        m = read_manifest(root / c.name)
        row["in"] += m["read"]
        row["out"] += m["records"]
        row["quarantined"].update(m["quarantined"])
        row["by_corpus"][c.name] = {"in": m["read"], "out": m["records"], "rejected": dict(m["quarantined"])}
    row["quarantined"] = dict(row["quarantined"])
    return row


def dedup_rows(cfg: DictConfig, result: MergeResult) -> dict[str, dict]:
    """Per dedup pass (raw, then each merge pass): candidates checked and rejected, removals by reason."""
    from kun_hpc.merge.dedup import dedup_stats
    from kun_hpc.merge.raw import PHASE

    names = ([PHASE] if cfg.dedup.raw else []) + [f"merge-dedup-{key}" for key, _ in result.dedup]
    return {n: dedup_stats(cfg.run.dir, n, cfg.dedup.partitions) for n in names}


def funnel(cfg: DictConfig, result: MergeResult) -> list[dict]:
    from kun_hpc.merge.raw import PHASE, raw_job

    rows = [shard_row(cfg)]
    if cfg.dedup.raw:
        from kun_hpc.stages.base import read_marker

        job = raw_job(cfg)
        groups = -(-len(job.inputs) // cfg.dedup.shards_per_task)
        phase = f"{PHASE}.apply"
        markers = [read_marker(cfg.run.dir, phase, f"{phase}-{g:05d}") for g in range(groups)]
        rows.append(funnel_row(PHASE, [m for m in markers if m], groups))
    rows += stage_funnel(cfg)
    for key, markers in result.dedup:
        rows.append(funnel_row(f"merge-dedup-{key}", markers, len(markers)))
    ds = dataset_counts(result)
    by_corpus = {c: {"in": n, "out": n, "rejected": {}} for c, n in ds["by_corpus"].items()}
    rows.append({"step": "dataset", "in": ds["rows"], "out": ds["rows"], "rejected": {}, "quarantined": {},
                 "by_corpus": by_corpus})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ plots
def _plots(folder: Path, rows: list[dict], ds: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kun_hpc.merge.assemble import LENGTH_BINS, SCORE_BINS

    names = []
    corpora = sorted({c for r in rows for c in r.get("by_corpus", {})})
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = np.zeros(len(rows))
    for c in corpora:
        vals = np.array([r.get("by_corpus", {}).get(c, {}).get("out", 0) for r in rows], dtype=float)
        ax.bar([r["step"] for r in rows], vals, bottom=bottom, label=c)
        bottom += vals
    ax.set_ylabel("records out")
    ax.set_title("funnel: records out of each step, by corpus")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(folder / "funnel.png", dpi=100)
    plt.close(fig)
    names.append("funnel.png")
    hists = {k: v for k, v in ds["histograms"].items() if k.startswith("length_")}
    if hists:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"<{b}" if b < 1 << 40 else f">={LENGTH_BINS[i]}" for i, b in enumerate(LENGTH_BINS[1:])]
        width = 0.8 / len(hists)
        for j, (k, v) in enumerate(sorted(hists.items())):
            ax.bar(np.arange(len(v)) + j * width, v, width, label=k.removeprefix("length_"))
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30)
        ax.set_xlabel("characters")
        ax.set_ylabel("records")
        ax.set_title("length distribution of the dataset")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "lengths.png", dpi=100)
        plt.close(fig)
        names.append("lengths.png")
    if sum(ds["histograms"].get("score", [])):
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar(SCORE_BINS[:-1], ds["histograms"]["score"], width=0.05, align="edge")
        ax.set_xlabel("Point score")
        ax.set_ylabel("records")
        ax.set_title("score distribution of the dataset")
        fig.tight_layout()
        fig.savefig(folder / "scores.png", dpi=100)
        plt.close(fig)
        names.append("scores.png")
    return names


# ---------------------------------------------------------------------------------------------- report
def _reasons(r: dict) -> str:
    merged = {**r.get("rejected", {}), **r.get("quarantined", {})}
    return ", ".join(f"{k}={v:,}" for k, v in sorted(merged.items())) or "-"


def write_report(cfg: DictConfig, result: MergeResult) -> dict:
    folder = result.report
    folder.mkdir(parents=True, exist_ok=True)
    rows = funnel(cfg, result)
    ds = dataset_counts(result)
    plots = _plots(folder, rows, ds)
    dedup = dedup_rows(cfg, result)
    report = {"run": str(cfg.run.dir), "dataset": ds, "funnel": rows, "dedup": dedup,
              "missing": result.inputs.missing, "plots": plots}  # fmt: skip
    atomic_write_bytes(folder / "report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2))
    header = ["step", "in", "out", "rejected + quarantined by reason"]
    table = [[r["step"], f"{r['in']:,}", f"{r['out']:,}", _reasons(r)] for r in rows]
    corpora = sorted({c for r in rows for c in r.get("by_corpus", {})})
    by_corpus = [
        [r["step"], *[f"{r['by_corpus'].get(c, {}).get('out', 0):,}" for c in corpora]] for r in rows
    ]
    md = [f"# Merge report: {cfg.run.name}", "", f"Dataset: {ds['rows']:,} records ({ds['kind']}) in "
          f"{ds['shards']} shards ({result.dataset}).", ""]  # fmt: skip
    if result.inputs.missing:
        md += [f"**Partial merge** (allow_partial): {len(result.inputs.missing)} units missing: "
               + ", ".join(result.inputs.missing), ""]  # fmt: skip
    md += ["## Funnel", "", *_md_table(header, table), "", "## Records out by corpus", ""]
    md += [*_md_table(["step", *corpora], by_corpus), ""]
    dedup_header, dedup_table = _dedup_table(cfg, dedup)
    if dedup_table:
        md += ["## Dedup", "", DEDUP_NOTE.format(**cfg.dedup), "", *_md_table(dedup_header, dedup_table), ""]
    md += [f"![{p}]({p})" for p in plots]
    atomic_write_bytes(folder / "report.md", ("\n".join(md) + "\n").encode())
    body = [f"<h1>Merge report: {html.escape(cfg.run.name)}</h1>",
            f"<p>Dataset: {ds['rows']:,} records ({ds['kind']}) in {ds['shards']} shards.</p>"]  # fmt: skip
    if result.inputs.missing:
        body.append(f"<p><b>Partial merge</b>: missing {html.escape(', '.join(result.inputs.missing))}</p>")
    body += ["<h2>Funnel</h2>", _html_table(header, table), "<h2>Records out by corpus</h2>"]
    body.append(_html_table(["step", *corpora], by_corpus))
    if dedup_table:
        body += ["<h2>Dedup</h2>", f"<p>{html.escape(DEDUP_NOTE.format(**cfg.dedup))}</p>"]
        body.append(_html_table(dedup_header, dedup_table))
    body += [f'<p><img src="{p}"></p>' for p in plots]
    page = "<!doctype html><meta charset=utf-8><title>merge report</title>" + "\n".join(body)
    atomic_write_bytes(folder / "report.html", page.encode())
    return report


DEDUP_NOTE = (
    "Candidates are pairs that share an LSH band key or an exact key; each was checked (once in every "
    "partition where it shares a key, so a pair may count more than once): a near duplicate has character "
    "{ngram}-gram Jaccard >= {threshold} and the same numbers, words and symbols (two long texts: sequences "
    "alike to a ratio >= {token_threshold}). Verified pairs: distinct. Clusters kept apart: a cluster that "
    "kept more than one record, because not all of its records were similar to each other."
)


def _dedup_table(cfg: DictConfig, dedup: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    header = ["pass", "candidate checks", "verified pairs", "below threshold", "tokens differ",
              "duplicate_exact", "near_duplicate", "clusters", "kept apart"]  # fmt: skip
    rows = []
    for name, d in dedup.items():
        rej, rem = d["rejected"], d.get("removed", {})
        cells = [d["candidates"], d["verified"], rej.get("below_threshold", 0), rej.get("tokens_differ", 0),
                 rem.get("duplicate_exact", 0), rem.get("near_duplicate", 0), d["clusters"],
                 d["kept_apart"]]  # fmt: skip
        rows.append([name, *[f"{c:,}" for c in cells]])
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table border=1><tr>{th}</tr>{trs}</table>"


# ------------------------------------------------------------------------------------------------- card
def write_card(cfg: DictConfig, result: MergeResult) -> None:
    from kun_hpc.merge.assemble import PAIR_FIELDS, TEXT_FIELDS

    ds = dataset_counts(result)
    fmt = "parquet/*.parquet" if cfg.merge.parquet else "jsonl/*.jsonl.zst"
    licences = {c.name: c.license or "unknown" for c in cfg.corpora}
    fields = PAIR_FIELDS if ds["kind"] == "pairs" else TEXT_FIELDS
    sources = [[c, licences.get(c, "unknown"), f"{n:,}"] for c, n in ds["by_corpus"].items()]
    settings = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("dedup", "merge")}
    models = {s: OmegaConf.select(cfg, f"{s}.engine.model", throw_on_missing=False)
              for s in ("label", "point", "answer") if s in cfg.pipeline.stages}  # fmt: skip
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {fmt}",
        "license: other",
        "---",
        f"# {cfg.run.name}",
        "",
        f"{ds['rows']:,} {'instruction/output pairs' if ds['kind'] == 'pairs' else 'texts'} made by kun-hpc "
        f"(stages: {', '.join(cfg.pipeline.stages) or 'none'}), deduplicated across all corpora "
        "(exact and verified MinHash near-duplicates"
        f"{', raw units before the stages' if cfg.dedup.raw else ''}; "
        f"final passes by {', '.join(k for k, _ in result.dedup) or 'nothing'}).",
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
        "the corpora those copies came from: weigh or audit by them.",
        "",
        "## Config",
        "",
        f"Run `{cfg.run.dir}`, models {models or 'none'}.",
        "",
        "```json",
        orjson.dumps(settings, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(),
        "```",
        "",
        "The funnel (records in and out of every step, by reason and corpus) is in ../report/report.md.",
    ]
    if result.inputs.missing:
        missing = ", ".join(result.inputs.missing)
        lines += ["", f"**Partial**: built from the complete groups only; missing: {missing}"]
    atomic_write_bytes(Path(result.dataset) / "README.md", ("\n".join(lines) + "\n").encode())
