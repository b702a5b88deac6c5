"""``dedup.raw``: exact and near-duplicate removal over all shards of all corpora, before the per-shard
stages (no GPU hour is spent on a duplicate). Reads ``<run>/shards``, writes ``<run>/dedup_raw`` with the
same relative paths; the grid's first stage reads from there (:func:`kun_hpc.cluster.grid.plan_grid`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.cluster.executors import Executor
from kun_hpc.cluster.grid import raw_dedup_hash
from kun_hpc.cluster.phases import run_phases
from kun_hpc.io.shards import list_shards
from kun_hpc.merge.dedup import dedup_phases, make_job, settings_of
from kun_hpc.pipeline import dedup_raw_dir, shard_root

PHASE = "dedup-raw"


def run_dedup_raw(cfg: DictConfig, executor: Executor) -> list[dict]:
    """Run (or resume) the raw dedup; the apply markers (counts per shard group)."""
    root = shard_root(cfg)
    shards = list_shards(root)
    settings = settings_of(cfg.dedup, cfg.shard.zstd_level)
    job = make_job(PHASE, "text", shards, root, dedup_raw_dir(cfg), settings, str(cfg.run.dir))
    return run_phases(dedup_phases(job, raw_dedup_hash(cfg)), executor, Path(cfg.run.dir) / "logs")[-1]
