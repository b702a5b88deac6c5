"""The four phases of one dedup as units of :mod:`kun_hpc.cluster.phases`, and what their markers say."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from kun_hpc.cluster.phases import Phase, PhaseUnit
from kun_hpc.config import config_hash
from kun_hpc.io.markers import read_marker
from kun_hpc.merge.dedup.job import DedupJob, output_settings


def dedup_phases(job: DedupJob, upstream_hash: str) -> list[Phase]:
    """The four phases of one dedup; their hash covers the settings that decide its output
    (:func:`~kun_hpc.merge.dedup.job.output_settings`), the inputs (relative to the run folder, which may
    move) and what made them."""
    st = job.settings
    inputs = [os.path.relpath(p, job.run_dir) for p in job.inputs]
    layout = {k: st[k] for k in ("partitions", "shards_per_task")}  # how its units split the work
    what = {"settings": output_settings(st), "layout": layout, "key": job.key, "inputs": inputs}
    h = config_hash({**what, "upstream": upstream_hash})
    spt = st["shards_per_task"]
    groups = [list(range(i, min(i + spt, len(job.inputs)))) for i in range(0, len(job.inputs), spt)]
    mod = "kun_hpc.merge.dedup"

    def phase(step: str, fn: str, args: list) -> Phase:
        name = f"{job.name}.{step}"
        return Phase(
            name, [PhaseUnit(name, i, f"{mod}.{fn}", (job, a), job.run_dir, h) for i, a in enumerate(args)]
        )

    return [
        phase("signatures", "signatures:signature_unit", groups),
        phase("buckets", "buckets:bucket_unit", list(range(st["partitions"]))),
        phase("clusters", "clusters:cluster_unit", [0]),
        phase("apply", "apply:apply_unit", groups),
    ]


def dedup_stats(run_dir: str | Path, name: str, partitions: int) -> dict:
    """What the buckets and clusters markers of dedup ``name`` say (for the report): candidate pair checks
    (a pair is checked in every partition where it shares a key) and their rejections by reason, the
    distinct verified pairs, clusters, those that kept more than one record apart, and removals by reason.
    Counts of units without a marker are missing from the sums."""
    out: dict[str, Any] = {"candidates": 0, "rejected": Counter()}
    phase = f"{name}.buckets"
    for t in range(partitions):
        m = read_marker(run_dir, phase, f"{phase}-{t:05d}") or {}
        out["candidates"] += m.get("candidates", 0)
        out["rejected"].update(m.get("rejected", {}))
    m = read_marker(run_dir, f"{name}.clusters", f"{name}.clusters-00000") or {}
    out["rejected"] = dict(out["rejected"])
    keys = ("pairs", "clusters", "kept_apart", "indirect_checks")
    return (
        out
        | {"verified": m.get("pairs", 0)}
        | {k: m.get(k, 0) for k in keys[1:]}
        | {"removed": m.get("removed", {})}
    )
