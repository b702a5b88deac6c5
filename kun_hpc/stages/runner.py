"""The worker entry of a stage unit: every shard of the unit through its stage, then the unit's marker.

A unit whose marker is valid (:mod:`kun_hpc.io.markers`) is done: :func:`run_unit` returns that marker and
runs nothing. Otherwise it loads the config the run was submitted with from the run folder, builds the stage
(:mod:`kun_hpc.stages.registry`), runs each shard in committed chunks
(:func:`kun_hpc.stages.chunks.run_shard_task`, which resumes after the last committed chunk) and commits the
marker: the unit's counts summed over its shards (:class:`kun_hpc.core.counts.Counts`), each shard's entry,
and where and when it ran.
"""

from __future__ import annotations

import os
import time

from kun_hpc import config
from kun_hpc.core.counts import Counts, Units
from kun_hpc.io.markers import runtime_fields, valid_marker, write_marker
from kun_hpc.stages.base import Stage, Unit
from kun_hpc.stages.chunks import run_shard_task
from kun_hpc.stages.registry import make_stage


def run_unit(unit: Unit, stage: Stage | None = None) -> dict:
    """Run every shard of a unit through its stage and commit the unit's completion marker."""
    marker = valid_marker(unit.run_dir, unit.stage, unit.name, unit.config_hash)
    if marker is not None:
        return marker
    cfg = config.load_run(unit.run_dir)
    stage = stage or make_stage(unit.ref or unit.stage, cfg)
    started = time.time()
    stage.setup()
    try:
        prov = {**stage.provenance(), "config_hash": unit.config_hash}
        shards = [run_shard_task(stage, t, cfg.pipeline.chunk_records, prov) for t in unit.shards]
    finally:
        stage.close()
    counts = sum((Counts.from_dict(s) for s in shards), Counts(units=Units(), stats={}))
    marker = {
        "unit": unit.name,
        "stage": unit.stage,
        "config_hash": unit.config_hash,
        **counts.to_dict(),
        "shards": shards,
        **runtime_fields(started),
        "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    }
    write_marker(unit.run_dir, unit.stage, unit.name, marker)
    return marker
