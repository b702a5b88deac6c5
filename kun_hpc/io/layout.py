"""Where a run keeps what it makes: the folders of its shards, of the raw dedup and of each stage."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def stage_key(name: str) -> str:
    """Folder-safe name of a stage: custom stages ("package.module:Class") go by their class name."""
    return name.rsplit(":", 1)[-1].lower()


def shard_root(cfg: DictConfig) -> Path:
    """Where ``kun-hpc shard`` writes the corpora's shards (``shard.output``)."""
    return Path(cfg.shard.output)


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    """Where stage ``stage`` writes its shards (and their ``rejected`` and ``quarantine`` files)."""
    return Path(cfg.run.dir) / "stages" / stage_key(stage)


RAW_DEDUP_PHASE = "dedup-raw"  # the raw dedup's global phases: done/dedup-raw.<step>/


def dedup_raw_dir(cfg: DictConfig) -> Path:
    """Where ``dedup.raw`` writes the deduplicated shards that the first stage then reads."""
    return Path(cfg.run.dir) / "dedup_raw"
