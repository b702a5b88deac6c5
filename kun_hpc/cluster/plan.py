"""``kun-hpc plan``: the grid, its arrays and sbatch calls, and estimated CPU/GPU hours, before submitting.

Records: a corpus counts the records of its shard manifest, or, before it is sharded,
``corpora[i].expected_records`` (the plan says which). Each stage's input is the stage before's output:
measured on the units of that stage that already ran (units out / records in), else
``pipeline.expected_keep.<stage>``, else 1. Throughput per task comes from the markers of units that already
ran (records / seconds), else ``pipeline.throughput.<stage>`` (input records per second per task). Units and
arrays of corpora not yet sharded are estimated from ``shard.records_per_shard``. Estimates say so.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.cluster.grid import pending_units, plan_grid
from kun_hpc.cluster.slurm import live_max_array_size, resources_for
from kun_hpc.core.counts import Counts
from kun_hpc.io.layout import stage_key
from kun_hpc.io.markers import valid_marker
from kun_hpc.io.shards import MANIFEST, read_manifest

SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001


@dataclass
class StagePlan:
    stage: str
    units: int
    pending: int
    arrays: int
    records: int  # input records of the stage
    throughput: float | None  # records/s per task
    source: str  # where the throughput came from
    gpus_per_task: int
    cpus_per_task: int
    keep: float = 1.0  # output records per input record
    keep_source: str = "assumed 1"

    @property
    def task_hours(self) -> float | None:
        return None if not self.throughput else self.records / self.throughput / 3600

    @property
    def resource_hours(self) -> tuple[str, float] | None:
        h = self.task_hours
        if h is None:
            return None
        return ("GPU h", h * self.gpus_per_task) if self.gpus_per_task else ("CPU h", h * self.cpus_per_task)


@dataclass
class CorpusCount:
    name: str
    records: int | None
    source: str  # "manifest", "expected_records" or why it is unknown
    shards: int  # in the manifest, or estimated from shard.records_per_shard


@dataclass
class Plan:
    stages: list[StagePlan]
    corpora: list[CorpusCount] = field(default_factory=list)
    max_array_size: int | None = None
    max_array_source: str = ""

    def __iter__(self):  # a plan reads as its list of stages
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, i: int) -> StagePlan:
        return self.stages[i]

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.stages:
            if (rh := p.resource_hours) is not None:
                out[rh[0]] = out.get(rh[0], 0.0) + rh[1]
        return out


def corpus_counts(cfg: DictConfig) -> list[CorpusCount]:
    rows = []
    for corpus in cfg.corpora:
        folder = Path(cfg.shard.output) / corpus.name
        if (folder / MANIFEST).exists():
            manifest = read_manifest(folder)
            rows.append(CorpusCount(corpus.name, manifest["records"], "manifest", len(manifest["shards"])))
        elif corpus.expected_records is not None:
            n = int(corpus.expected_records)
            rows.append(
                CorpusCount(corpus.name, n, "expected_records", math.ceil(n / cfg.shard.records_per_shard))
            )
        else:
            rows.append(CorpusCount(corpus.name, None, "unknown: not sharded, no expected_records", 0))
    return rows


def shard_records(cfg: DictConfig) -> int:
    return sum(c.records or 0 for c in corpus_counts(cfg))


def _max_array_size(cfg: DictConfig) -> tuple[int | None, str]:
    if cfg.executor.slurm.max_array_size is not None:
        return int(cfg.executor.slurm.max_array_size), "executor.slurm.max_array_size"
    if cfg.executor.kind != "slurm":
        return None, ""
    try:
        return live_max_array_size(), "the live MaxArraySize"
    except (OSError, subprocess.CalledProcessError):  # planning away from the cluster
        return SLURM_DEFAULT_MAX_ARRAY_SIZE, "Slurm's default MaxArraySize: scontrol did not answer here"


def plan(cfg: DictConfig) -> Plan:
    counts = corpus_counts(cfg)
    sharded = any((Path(cfg.shard.output) / c.name / MANIFEST).exists() for c in counts)
    # without shards the grid is empty; building it would also need the models' tokenizers
    grid = plan_grid(cfg) if sharded else None
    pending = pending_units(grid) if grid else {}
    unsharded = sum(c.shards for c in counts if c.source == "expected_records")
    spt = cfg.pipeline.shards_per_task
    max_array, max_array_source = _max_array_size(cfg)
    records = sum(c.records or 0 for c in counts)
    out = []
    for name in cfg.pipeline.stages:
        key = stage_key(name)
        units = grid.units[key] if grid else []
        measured = [m for u in units if (m := valid_marker(u.run_dir, key, u.name, u.config_hash))]
        seconds = sum(m["timings"]["seconds"] for m in measured)
        if measured and seconds > 0:
            thr, source = sum(m["in"] for m in measured) / seconds, f"measured on {len(measured)} units"
        elif key in cfg.pipeline.throughput:
            thr, source = float(cfg.pipeline.throughput[key]), "pipeline.throughput (configured)"
        else:
            thr, source = None, "unknown: set pipeline.throughput." + key
        n_in = sum(m["in"] for m in measured)
        if measured and n_in:
            keep, keep_source = sum(Counts.from_dict(m).unit_counts.out for m in measured) / n_in, "measured"
        elif key in cfg.pipeline.expected_keep:
            keep, keep_source = float(cfg.pipeline.expected_keep[key]), "pipeline.expected_keep"
        else:
            keep, keep_source = 1.0, "assumed 1"
        extra = math.ceil(unsharded / spt)
        n = len(pending.get(key, [])) + extra
        arrays = -(-n // max_array) if max_array else (1 if n else 0)
        res = resources_for(cfg, key)
        out.append(
            StagePlan(
                key,
                len(units) + extra,
                n,
                arrays,
                round(records),
                thr,
                source,
                int(res["gpus_per_task"]),
                int(res["cpus_per_task"]),
                keep,
                keep_source,
            )
        )
        records *= keep
    return Plan(out, counts, max_array, max_array_source)


def print_plan(result: Plan | list[StagePlan], console=None) -> None:
    from rich.table import Table

    from kun_hpc.core.console import console as default_console

    console = console or default_console()
    result = result if isinstance(result, Plan) else Plan(list(result))
    for c in result.corpora:
        n = f"{c.records:,}" if c.records is not None else "?"
        console.print(f"corpus {c.name}: {n} records ({c.source}), {c.shards:,} shards")
    table = Table(title="kun-hpc plan (hours are estimates)")
    for col in (
        "stage",
        "units",
        "pending",
        "arrays = sbatch calls",
        "records in",
        "kept",
        "rec/s/task",
        "task h",
        "resource h",
        "throughput from",
    ):
        table.add_column(col)
    for p in result.stages:
        rh = p.resource_hours
        table.add_row(
            p.stage,
            f"{p.units:,}",
            f"{p.pending:,}",
            str(p.arrays),
            f"{p.records:,}",
            f"x{p.keep:.2f}",
            f"{p.throughput:.1f}" if p.throughput else "?",
            f"{p.task_hours:,.1f}" if p.task_hours is not None else "?",
            f"{rh[1]:,.1f} {rh[0]}" if rh else "?",
            p.source,
        )
    console.print(table)
    sources = {p.keep_source for p in result.stages}
    each = ", ".join(f"{p.stage}={p.keep_source}" for p in result.stages)
    each = sources.pop() if len(sources) == 1 else each
    console.print(f"kept (output records per input record) from: {each}")
    totals = ", ".join(f"{v:,.0f} {k}" for k, v in sorted(result.totals().items()))
    console.print(f"total sbatch calls: {sum(p.arrays for p in result.stages)}")
    if result.max_array_source:
        console.print(f"array size limit: {result.max_array_size} ({result.max_array_source})")
    console.print(f"total: {totals or '?'} (estimates)")
