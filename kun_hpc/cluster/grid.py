"""The work grid: units (stage, group of shards), their completion markers, and what is left to run.

A unit's marker is valid when it exists and was written under the unit's config hash. A stage's hash
covers its own settings and every upstream stage's, so changing an upstream stage invalidates the
stages after it. If unit g of stage k must run again, unit g of every later stage must too: its input
is about to be rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kun_hpc.config import config_hash
from kun_hpc.io.layout import dedup_raw_dir, shard_root, stage_dir, stage_key
from kun_hpc.io.markers import valid_marker
from kun_hpc.io.shards import list_shards
from kun_hpc.stages.base import ShardTask, Unit
from kun_hpc.stages.registry import stage_class


@dataclass
class Grid:
    stages: list[str]
    units: dict[str, list[Unit]] = field(default_factory=dict)  # stage -> units in group order
    shards: list[Path] = field(default_factory=list)

    @property
    def groups(self) -> int:
        return len(next(iter(self.units.values()), []))


def stage_hashes(cfg: DictConfig) -> dict[str, str]:
    """Cumulative config hash per stage: its own section or options, plus everything upstream."""
    hashes: dict[str, str] = {}
    upstream = config_hash(
        {
            "shards": OmegaConf.to_container(cfg.shard),
            "chunk": cfg.pipeline.chunk_records,
            "spt": cfg.pipeline.shards_per_task,
            **({"dedup_raw": raw_dedup_hash(cfg)} if cfg.dedup.raw else {}),
        }
    )
    for name in cfg.pipeline.stages:
        key = stage_key(name)
        own = cfg.get(key) if key in cfg else cfg.pipeline.options.get(key, {})
        own = OmegaConf.to_container(own) if isinstance(own, DictConfig) else own
        extra = stage_class(name).hash_inputs(cfg)
        upstream = config_hash({"stage": name, "own": own, "extra": extra, "upstream": upstream})
        hashes[name] = upstream
    return hashes


def raw_dedup_hash(cfg: DictConfig) -> str:
    """What decides the raw dedup's output: the shard settings and the dedup section."""
    shard, dedup = OmegaConf.to_container(cfg.shard), OmegaConf.to_container(cfg.dedup)
    return config_hash({"shards": shard, "dedup": dedup})


def plan_grid(cfg: DictConfig) -> Grid:
    root = shard_root(cfg)
    shards = list_shards(root) if root.exists() else []
    spt = cfg.pipeline.shards_per_task
    grid = Grid([stage_key(s) for s in cfg.pipeline.stages], shards=shards)
    hashes = stage_hashes(cfg)
    previous: list[Path] = shards
    prev_root = root
    if cfg.dedup.raw:  # the first stage reads the deduplicated shards (same relative paths)
        prev_root = dedup_raw_dir(cfg)
        previous = [prev_root / p.relative_to(root) for p in shards]
    for name in cfg.pipeline.stages:
        out_root = stage_dir(cfg, name)
        outputs = [out_root / p.relative_to(prev_root) for p in previous]
        tasks = [
            ShardTask(
                str(i),
                str(o),
                str(out_root / "rejected" / o.relative_to(out_root)),
                str(out_root / "quarantine" / o.relative_to(out_root)),
            )
            for i, o in zip(previous, outputs, strict=True)
        ]
        grid.units[stage_key(name)] = [
            Unit(
                stage_key(name),
                g,
                tuple(tasks[g * spt : (g + 1) * spt]),
                str(cfg.run.dir),
                hashes[name],
                name,
            )
            for g in range(-(-len(tasks) // spt))
        ]
        previous, prev_root = outputs, out_root
    return grid


def is_done(unit: Unit) -> bool:
    """The unit has a marker written under its config hash."""
    return valid_marker(unit.run_dir, unit.stage, unit.name, unit.config_hash) is not None


def pending_units(grid: Grid) -> dict[str, list[Unit]]:
    """Units to run per stage: no valid marker, or an upstream unit of the same group must run."""
    pending: dict[str, list[Unit]] = {}
    must_run: set[int] = set()
    for name in grid.stages:
        for u in grid.units[name]:
            if u.index in must_run or not is_done(u):
                must_run.add(u.index)
        pending[name] = [u for u in grid.units[name] if u.index in must_run]
    return pending
