"""``dedup.raw``: exact and near-duplicate removal over all shards of all corpora, before the per-shard
stages (no GPU hour is spent on a duplicate). Reads ``<run>/shards``, writes ``<run>/dedup_raw`` with the
same relative paths; the grid's first stage reads from there (:func:`kun_hpc.cluster.grid.plan_grid`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.cluster.executors import Executor
from kun_hpc.cluster.grid import raw_dedup_hash
from kun_hpc.cluster.phases import run_phases
from kun_hpc.io.layout import RAW_DEDUP_PHASE, dedup_raw_dir, shard_root
from kun_hpc.io.shards import list_shards
from kun_hpc.merge.dedup import DedupJob, dedup_phases, make_job, settings_of

PHASE = RAW_DEDUP_PHASE


def raw_job(cfg: DictConfig) -> DedupJob:
    root = shard_root(cfg)
    settings = settings_of(cfg.dedup, cfg.shard.zstd_level)
    return make_job(PHASE, "text", list_shards(root), root, dedup_raw_dir(cfg), settings, str(cfg.run.dir))


def run_dedup_raw(cfg: DictConfig, executor: Executor) -> list[dict]:
    """Run (or resume) the raw dedup; the apply markers (counts per shard group)."""
    phases = dedup_phases(raw_job(cfg), raw_dedup_hash(cfg))
    return run_phases(phases, executor, Path(cfg.run.dir) / "logs")[-1]
