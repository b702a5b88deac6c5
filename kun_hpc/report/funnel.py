"""The funnel's numbers, read only from what the steps committed: shard manifests, the raw dedup's, the
stages', the merge-decontaminate and the merge dedups' markers (counted by
:func:`kun_hpc.cluster.funnel.funnel_row`, the same counting ``kun-hpc status`` prints), and the assemble
markers for the dataset itself."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from kun_hpc.cluster.funnel import funnel_row, stage_markers
from kun_hpc.core.counts import Counts
from kun_hpc.io.layout import dedup_raw_dir, shard_root, stage_dir
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import MANIFEST, read_manifest
from kun_hpc.merge.assemble import merge_dir
from kun_hpc.merge.decontaminate import PHASE as DECONTAMINATE
from kun_hpc.merge.dedup import dedup_stats
from kun_hpc.merge.raw import PHASE as RAW_PHASE
from kun_hpc.merge.raw import raw_job

if TYPE_CHECKING:
    from kun_hpc.merge.assemble import MergeResult


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
