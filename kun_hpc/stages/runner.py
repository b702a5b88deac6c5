"""The worker entry of a stage unit: every shard of the unit through its stage, then the unit's marker.

A unit whose marker is valid (:mod:`kun_hpc.io.markers`) is done: :func:`run_unit` returns that marker and
runs nothing. Otherwise it loads the config the run was submitted with from the run folder, builds the stage
(:mod:`kun_hpc.stages.registry`), runs each shard in committed chunks
(:func:`kun_hpc.stages.chunks.run_shard_task`, which resumes after the last committed chunk) and commits the
marker: the unit's counts summed over its shards (:class:`kun_hpc.core.counts.Counts`), each shard's entry,
and where and when it ran. The chunk folders are removed only then, so an interrupted unit resumes at its
last chunk whichever of its shards it was in.

In a worker process (local or Slurm; see :func:`in_worker`) the unit writes its own lines to stderr, which
is the unit's log: ``kun-hpc unit <name>: ...``, one line each, at the start (stage, shards, config hash),
for each shard its resume point, after each chunk commit (records in/out, running rate) and at the end
(totals, rate, elapsed time) or on failure (issue 16). An inline run shows progress bars instead.
"""

from __future__ import annotations

import os
import sys
import time

from kun_hpc import config
from kun_hpc.core.counts import Counts, Units
from kun_hpc.io.markers import runtime_fields, valid_marker, write_marker
from kun_hpc.stages.base import Stage, Unit
from kun_hpc.stages.chunks import committed_chunks, remove_chunks, run_shard_task
from kun_hpc.stages.registry import make_stage

LOG_PREFIX = "kun-hpc unit"


def in_worker() -> bool:
    """Whether this process runs units for an executor that keeps a log per unit: submitit sets
    ``SUBMITIT_EXECUTOR`` (local and Slurm), a hand-written sbatch script runs under ``SLURM_JOB_ID``."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SLURM_JOB_ID"))


def _counts_text(c: Counts) -> str:
    rejected, bad = sum(c.rejected.values()), sum(c.quarantined.values())
    text = f"in {c.in_} out {c.out} rejected {rejected} quarantined {bad}"
    if c.units is not None and c.units.out != c.out:  # a fan-out stage: the lines it writes are units
        text += f" (units out {c.units.out})"
    return text


class UnitLog:
    """The unit's own lines on stderr (``kun-hpc unit <name>: ...``); silent when ``enabled`` is false.
    Rates count the records this attempt processed (not those it resumed past), over its seconds."""

    def __init__(self, unit: Unit, enabled: bool):
        self.unit, self.enabled = unit, enabled
        self.started = time.time()
        self.records = 0  # input records processed by this attempt

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"{LOG_PREFIX} {self.unit.name}: {text}", file=sys.stderr, flush=True)

    def rate(self) -> str:
        seconds = time.time() - self.started
        return f"{self.records / seconds:.1f} rec/s" if seconds > 0 else "? rec/s"

    def start(self, config_hash: str) -> None:
        u = self.unit
        host, job = os.uname().nodename, os.environ.get("SLURM_JOB_ID", "")
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0") or "0"
        where = f"host {host}" + (f", job {job}, restarts {restarts}" if job else f", pid {os.getpid()}")
        self.line(f"start: stage {u.stage}, {len(u.shards)} shards, config {config_hash}, {where}")
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
            self.line(f"shard {shard}/{n} chunk {index} committed: {_counts_text(counts)}; {self.rate()}")

        return on_commit

    def end(self, counts: Counts) -> None:
        elapsed = time.time() - self.started
        self.line(
            f"done: {_counts_text(counts)}; {self.records} records this attempt, {self.rate()}, "
            f"elapsed {elapsed:.1f} s"
        )

    def failed(self, e: BaseException) -> None:
        elapsed = time.time() - self.started
        why = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
        self.line(f"failed after {elapsed:.1f} s ({self.records} records this attempt): {why}")


def run_unit(unit: Unit, stage: Stage | None = None) -> dict:
    """Run every shard of a unit through its stage and commit the unit's completion marker."""
    marker = valid_marker(unit.run_dir, unit.stage, unit.name, unit.config_hash)
    if marker is not None:
        for t in unit.shards:  # what a kill while deleting the chunk folders after the marker left
            remove_chunks(t.output)
        return marker
    log = UnitLog(unit, in_worker())
    log.start(unit.config_hash)
    try:
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
    except BaseException as e:
        log.failed(e)
        raise
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
    log.end(counts)
    return marker
