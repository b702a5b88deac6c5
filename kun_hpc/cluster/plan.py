"""``kun-hpc plan``: the grid, its arrays and sbatch calls, and estimated CPU/GPU hours, before submitting.

Throughput per task comes from ``pipeline.throughput.<stage>`` (input records per second per task) or,
when units of the stage already ran, from their markers (records / seconds). Estimates say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.cluster.grid import pending_units, plan_grid
from kun_hpc.cluster.slurm import live_max_array_size, resources_for
from kun_hpc.io.shards import MANIFEST, read_manifest
from kun_hpc.pipeline import stage_key
from kun_hpc.stages.base import read_marker


@dataclass
class StagePlan:
    stage: str
    units: int
    pending: int
    arrays: int
    records: int
    throughput: float | None  # records/s per task
    source: str  # where the throughput came from
    gpus_per_task: int
    cpus_per_task: int

    @property
    def task_hours(self) -> float | None:
        return None if not self.throughput else self.records / self.throughput / 3600

    @property
    def resource_hours(self) -> tuple[str, float] | None:
        h = self.task_hours
        if h is None:
            return None
        return ("GPU h", h * self.gpus_per_task) if self.gpus_per_task else ("CPU h", h * self.cpus_per_task)


def shard_records(cfg: DictConfig) -> int:
    total = 0
    for corpus in cfg.corpora:
        folder = Path(cfg.shard.output) / corpus.name
        if (folder / MANIFEST).exists():
            total += read_manifest(folder)["records"]
    return total


def plan(cfg: DictConfig) -> list[StagePlan]:
    grid = plan_grid(cfg)
    pending = pending_units(grid)
    max_array = cfg.executor.slurm.max_array_size
    if max_array is None and cfg.executor.kind == "slurm":
        max_array = live_max_array_size()
    records = shard_records(cfg)
    out = []
    for stage in grid.stages:
        key = stage_key(stage)
        measured = [m for u in grid.units[stage] if (m := read_marker(u.run_dir, stage, u.name))]
        if measured and sum(m["timings"]["seconds"] for m in measured) > 0:
            thr = sum(m["in"] for m in measured) / sum(m["timings"]["seconds"] for m in measured)
            source = f"measured on {len(measured)} units"
        elif key in cfg.pipeline.throughput:
            thr, source = float(cfg.pipeline.throughput[key]), "pipeline.throughput (configured)"
        else:
            thr, source = None, "unknown: set pipeline.throughput." + key
        n = len(pending[stage])
        arrays = -(-n // max_array) if max_array else (1 if n else 0)
        res = resources_for(cfg, key)
        out.append(
            StagePlan(
                stage,
                len(grid.units[stage]),
                n,
                arrays,
                records,
                thr,
                source,
                int(res["gpus_per_task"]),
                int(res["cpus_per_task"]),
            )
        )
    return out


def print_plan(plans: list[StagePlan]) -> None:
    from rich.table import Table

    from kun_hpc.stages.summary import console

    table = Table(title="kun-hpc plan (hours are estimates)")
    for col in (
        "stage",
        "units",
        "pending",
        "arrays = sbatch calls",
        "records",
        "rec/s/task",
        "task h",
        "resource h",
        "throughput from",
    ):
        table.add_column(col)
    for p in plans:
        rh = p.resource_hours
        table.add_row(
            p.stage,
            str(p.units),
            str(p.pending),
            str(p.arrays),
            f"{p.records:,}",
            f"{p.throughput:.1f}" if p.throughput else "?",
            f"{p.task_hours:.2f}" if p.task_hours is not None else "?",
            f"{rh[1]:.2f} {rh[0]}" if rh else "?",
            p.source,
        )
    console().print(table)
    print(f"total sbatch calls: {sum(p.arrays for p in plans)}")
