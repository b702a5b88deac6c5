"""The worker entry of a stage unit: every shard of the unit through its stage, then the unit's marker.

A unit whose marker is valid (:mod:`kun_hpc.io.markers`) is done: :func:`run_unit` returns that marker and
runs nothing. Otherwise it loads the config the run was submitted with from the run folder, builds the stage
(:mod:`kun_hpc.stages.registry`), runs each shard in committed chunks
(:func:`kun_hpc.stages.chunks.run_shard_task`, which resumes after the last committed chunk) and commits the
marker: the unit's counts summed over its shards (:class:`kun_hpc.core.counts.Counts`), each shard's entry,
and where and when it ran; all of it under the unit's lock (one attempt at a time, issue 18). The chunk
folders are removed only then, so an interrupted unit resumes at its last chunk whichever of its shards it
was in.

In a worker process (local or Slurm) the unit writes its own lines to its log (:mod:`kun_hpc.core.unit_log`,
issue 16): at the start (stage, shards, config hash), for each shard its resume point, after each chunk
commit (records in/out, running rate) and at the end (totals, rate, elapsed time), on failure or on an
interrupt. An inline run shows progress bars instead.
"""

from __future__ import annotations

import os

from kun_hpc import config
from kun_hpc.core.counts import Counts, Units
from kun_hpc.core.unit_log import UnitLog, counts_text
from kun_hpc.io.lock import one_attempt
from kun_hpc.io.markers import runtime_fields, valid_marker, write_marker
from kun_hpc.stages.base import Stage, Unit
from kun_hpc.stages.chunks import committed_chunks, remove_chunks, run_shard_task
from kun_hpc.stages.registry import make_stage


class StageUnitLog(UnitLog):
    """A stage unit's lines (:class:`~kun_hpc.core.unit_log.UnitLog`): also each shard's resume point and
    each chunk commit."""

    def __init__(self, unit: Unit, enabled: bool | None = None):
        super().__init__(unit.name, enabled, "committed chunks stay; a re-run resumes after the last one")
        self.unit = unit

    def start_unit(self, config_hash: str) -> None:
        u = self.unit
        self.start(f"stage {u.stage}, {len(u.shards)} shards, config {config_hash}")
        for k, t in enumerate(u.shards, 1):
            done = committed_chunks(t.output, config_hash)
            if done:
                n = sum(c["in"] for c in done)
                resume = f"resume after {len(done)} committed chunks ({n} records), at record {n}"
            else:
                resume = "nothing committed, from the first record"
            self.line(f"shard {k}/{len(u.shards)} {t.input} -> {t.output}: {resume}")

    def commit(self, shard: int):
        def on_commit(index: int, counts: Counts) -> None:
            self.records += counts.in_
            n = len(self.unit.shards)
            self.line(f"shard {shard}/{n} chunk {index} committed: {counts_text(counts)}; {self.rate()}")

        return on_commit


def run_unit(unit: Unit, stage: Stage | None = None) -> dict:
    """Run every shard of a unit through its stage and commit the unit's completion marker. One attempt of a
    unit at a time: a second one (Slurm's requeued copy while the first still runs on a node it lost
    contact with) waits for the first to end (:func:`kun_hpc.io.lock.one_attempt`), then finds its marker or
    resumes after its last chunk."""
    with one_attempt(unit.run_dir, unit.stage, unit.name, unit.config_hash):
        return _run_unit(unit, stage)


def _run_unit(unit: Unit, stage: Stage | None) -> dict:
    marker = valid_marker(unit.run_dir, unit.stage, unit.name, unit.config_hash)
    if marker is not None:
        for t in unit.shards:  # what a kill while deleting the chunk folders after the marker left
            remove_chunks(t.output)
        return marker
    log = StageUnitLog(unit)
    log.start_unit(unit.config_hash)
    with log:
        cfg = config.load_run(unit.run_dir)
        stage = stage or make_stage(unit.ref or unit.stage, cfg)
        stage.setup()
        try:
            prov = {**stage.provenance(), "config_hash": unit.config_hash}
            shards = [
                run_shard_task(
                    stage,
                    t,
                    cfg.pipeline.chunk_records,
                    prov,
                    config_hash=unit.config_hash,
                    started=log.started,
                    on_commit=log.commit(k),
                )
                for k, t in enumerate(unit.shards, 1)
            ]
        finally:
            stage.close()
    counts = sum((Counts.from_dict(s) for s in shards), Counts(units=Units(), stats={}))
    marker = {
        "unit": unit.name,
        "stage": unit.stage,
        "config_hash": unit.config_hash,
        **counts.to_dict(),
        "shards": shards,
        **runtime_fields(log.started),
        "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    }
    write_marker(unit.run_dir, unit.stage, unit.name, marker)
    for t in unit.shards:
        remove_chunks(t.output)
    log.end(counts_text(counts))
    return marker
