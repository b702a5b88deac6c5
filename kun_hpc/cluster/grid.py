"""The work grid: units (stage, group of shards), their completion markers, and what is left to run.

A unit's marker is valid when it exists and was written under the unit's config hash. A stage's hash
covers what decides its output and nothing else (issue 16, item 1): its own section (or options) and
:meth:`~kun_hpc.stages.base.Stage.hash_inputs`, without the keys :mod:`kun_hpc.config.outputs` declares
not to change output, on top of its upstream: the previous stage's hash, or the shards' (each corpus's
shard hash, ``pipeline.shards_per_task``, the raw dedup's). Changing an upstream stage thus invalidates the
stages after it. If unit g of stage k must run again, unit g of every later stage must too: its input is
about to be rewritten. docs/reruns.md lists what a change of each key re-runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.config import config_hash
from kun_hpc.config.outputs import output_values
from kun_hpc.io.layout import dedup_raw_dir, shard_root, stage_dir, stage_key
from kun_hpc.io.markers import valid_marker
from kun_hpc.io.shards import list_shards
from kun_hpc.stages.base import ShardTask, Unit
from kun_hpc.stages.registry import stage_class
from kun_hpc.stages.shard import shard_config_hash


@dataclass
class Grid:
    stages: list[str]
    units: dict[str, list[Unit]] = field(default_factory=dict)  # stage -> units in group order
    shards: list[Path] = field(default_factory=list)

    @property
    def groups(self) -> int:
        return len(next(iter(self.units.values()), []))


def stage_hashes(cfg: DictConfig) -> dict[str, str]:
    """Cumulative config hash per stage of ``pipeline.stages`` (as named there): its own section or options
    and :meth:`~kun_hpc.stages.base.Stage.hash_inputs`, plus everything upstream.

    ``pipeline.shards_per_task`` is in it: unit g's marker holds the shards of group g, and another group
    size gives unit g other shards, so every unit runs again (finished shards are not carried over)."""
    raw = {"dedup_raw": raw_dedup_hash(cfg)} if cfg.dedup.raw else {}
    upstream = config_hash({"shards": shards_hash(cfg), "spt": cfg.pipeline.shards_per_task, **raw})
    hashes: dict[str, str] = {}
    for name in cfg.pipeline.stages:
        key = stage_key(name)
        if key in cfg:
            own = output_values(cfg[key], key)
        else:
            own = output_values(cfg.pipeline.options.get(key, {}), f"pipeline.options.{key}")
        extra = stage_class(name).hash_inputs(cfg)
        upstream = config_hash({"stage": name, "own": own, "extra": extra, "upstream": upstream})
        hashes[name] = upstream
    return hashes


def shards_hash(cfg: DictConfig) -> str:
    """What decides the records of the run's shards: each corpus's shard hash
    (:func:`~kun_hpc.stages.shard.shard_config_hash`), not where they are nor how they are compressed."""
    return config_hash({str(c.name): shard_config_hash(cfg, c) for c in cfg.corpora})


def raw_dedup_hash(cfg: DictConfig) -> str:
    """What decides the raw dedup's output: the shards and the dedup section's output keys."""
    return config_hash({"shards": shards_hash(cfg), "dedup": output_values(cfg.dedup, "dedup")})


def merge_upstream(cfg: DictConfig) -> str:
    """The hash of what made the merge's inputs: the last stage's, else the raw dedup's or the shards'."""
    if cfg.pipeline.stages:
        return stage_hashes(cfg)[cfg.pipeline.stages[-1]]
    return raw_dedup_hash(cfg) if cfg.dedup.raw else shards_hash(cfg)


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
