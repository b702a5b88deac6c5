"""``kun-hpc plan``: the grid, its arrays and sbatch calls, and estimated CPU/GPU hours, before submitting.

Records: a corpus counts the records of its shard manifest, or, before it is sharded,
``corpora[i].expected_records`` (the plan says which). Each stage's input is the stage before's output:
measured on the units of that stage that already ran (units out / records in), else
``pipeline.expected_keep.<stage>``, else 1. Throughput per task comes from the markers of units that already
ran (records / seconds), else ``pipeline.throughput.<stage>`` (input records per second per task). Units and
arrays of corpora not yet sharded are estimated from ``shard.records_per_shard``. Estimates say so. A corpus
neither sharded nor given ``expected_records`` has an unknown size: the counts it adds to read ``?``.

With ``dedup.raw``, the stages read what the raw dedup kept: once its apply markers cover every shard, the
records of the first stage are theirs; before, the plan counts the shards and says it is before the dedup.

Wall clock for N GPUs (``kun-hpc plan --gpus N``, issue 16): each stage runs its pending units in waves of
as many tasks at once as the N GPUs hold (``N // gpus_per_task``), the arrays' ``%array_parallelism``
throttle (per array) and the units allow; a CPU stage only by the throttle (the cluster's free CPUs are not
known here). A wave lasts one unit's share of the stage's task hours (units are of equal size). The run's
wall clock is the stages' sum, stage by stage: chained units of consecutive stages overlap, so a run may end
sooner, but the GPU stages share the same N GPUs.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.cluster.grid import pending_units, plan_grid
from kun_hpc.cluster.phases import phase_markers
from kun_hpc.cluster.slurm import live_max_array_size, resources_for
from kun_hpc.core.counts import Counts
from kun_hpc.io.layout import RAW_DEDUP_PHASE, stage_key
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
    array_parallelism: int = 0  # each array's %N throttle
    concurrent: int | None = None  # tasks at once with Plan.gpus GPUs (0: a task needs more GPUs)
    wall_hours: float | None = None  # the stage's pending units, in waves of `concurrent` tasks
    # a corpus of unknown size (not sharded, no expected_records; issue 16): units, pending, arrays and
    # records count the others only, and the hours are unknown
    unknown: bool = False

    @property
    def task_hours(self) -> float | None:
        if not self.throughput or self.unknown:
            return None
        return self.records / self.throughput / 3600

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
    gpus: int | None = None  # the GPUs the wall-clock estimate assumes (kun-hpc plan --gpus N)
    raw_dedup: str = ""  # with dedup.raw: whether the records are before or after it

    def __iter__(self):  # a plan reads as its list of stages
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, i: int) -> StagePlan:
        return self.stages[i]

    def wall_hours(self) -> float | None:
        """The stages' wall clock added up (stage by stage); None when one is unknown."""
        walls = [p.wall_hours for p in self.stages if p.pending]
        return None if any(w is None for w in walls) else sum(walls)

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


def raw_dedup_kept(cfg: DictConfig, counts: list[CorpusCount]) -> int | None:
    """Records the raw dedup kept (its apply markers' ``out``) when those markers cover every shard of the
    corpora; else None (it has not run, or not to the end)."""
    markers = phase_markers(cfg.run.dir, f"{RAW_DEDUP_PHASE}.apply")
    covered = sum(len(m.get("shards", [])) for m in markers)
    if not markers or any(c.source != "manifest" for c in counts) or covered != sum(c.shards for c in counts):
        return None
    return sum(m["out"] for m in markers)


def _wall(p: StagePlan, gpus: int, arrays: int) -> tuple[int, float | None]:
    """(tasks at once, wall hours) of a stage's pending units with ``gpus`` GPUs (module docstring)."""
    at_once = [p.pending, p.array_parallelism * max(arrays, 1)]
    if p.gpus_per_task:
        at_once.append(gpus // p.gpus_per_task)
    c = min(at_once)
    if not p.pending:  # nothing left to run: no time (issue 16)
        return 0, 0.0
    if c <= 0 or p.task_hours is None or not p.units:
        return c, None
    unit_hours = p.task_hours / p.units
    return c, math.ceil(p.pending / c) * unit_hours


def plan(cfg: DictConfig, gpus: int | None = None) -> Plan:
    """The plan of ``cfg``'s run (module docstring); with ``gpus``, each stage's wall clock on that many."""
    counts = corpus_counts(cfg)
    sharded = any((Path(cfg.shard.output) / c.name / MANIFEST).exists() for c in counts)
    # without shards the grid is empty; building it would also need the models' tokenizers
    grid = plan_grid(cfg) if sharded else None
    pending = pending_units(grid) if grid else {}
    unsharded = sum(c.shards for c in counts if c.source == "expected_records")
    spt = cfg.pipeline.shards_per_task
    max_array, max_array_source = _max_array_size(cfg)
    records = sum(c.records or 0 for c in counts)
    unknown = any(c.records is None for c in counts)
    raw_dedup = ""
    if cfg.dedup.raw:
        kept = raw_dedup_kept(cfg, counts)
        if kept is None:
            raw_dedup = f"raw dedup (dedup.raw): not run yet: {records:,} records are before it"
            raw_dedup += "; the stages will see fewer"
        else:
            raw_dedup = f"raw dedup (dedup.raw): {records:,} records -> {kept:,} kept (its markers)"
            raw_dedup += ": the stages see these"
            records = kept
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
                int(res["array_parallelism"]),
                unknown=unknown,
            )
        )
        if gpus is not None:
            out[-1].concurrent, out[-1].wall_hours = _wall(out[-1], gpus, arrays)
        records *= keep
    return Plan(out, counts, max_array, max_array_source, gpus, raw_dedup)


def print_plan(result: Plan | list[StagePlan], console=None) -> None:
    from rich.table import Table

    from kun_hpc.core.console import console as default_console

    console = console or default_console()
    result = result if isinstance(result, Plan) else Plan(list(result))
    for c in result.corpora:
        n = f"{c.records:,}" if c.records is not None else "?"
        shards = f"{c.shards:,}" if c.records is not None else "?"
        console.print(f"corpus {c.name}: {n} records ({c.source}), {shards} shards")
    if result.raw_dedup:
        console.print(result.raw_dedup)
    walls = result.gpus is not None
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
        *(("at once", f"wall h ({result.gpus} GPUs)") if walls else ()),
        "throughput from",
    ):
        table.add_column(col)
    for p in result.stages:
        rh = p.resource_hours
        table.add_row(
            p.stage,
            *(_count(n, p.unknown) for n in (p.units, p.pending, p.arrays, p.records)),
            f"x{p.keep:.2f}",
            f"{p.throughput:.1f}" if p.throughput else "?",
            f"{p.task_hours:,.1f}" if p.task_hours is not None else "?",
            f"{rh[1]:,.1f} {rh[0]}" if rh else "?",
            *(
                (_concurrent_text(p), f"{p.wall_hours:,.1f}" if p.wall_hours is not None else "?")
                if walls
                else ()
            ),
            p.source,
        )
    console.print(table)
    sources = {p.keep_source for p in result.stages}
    each = ", ".join(f"{p.stage}={p.keep_source}" for p in result.stages)
    each = sources.pop() if len(sources) == 1 else each
    console.print(f"kept (output records per input record) from: {each}")
    totals = ", ".join(f"{v:,.0f} {k}" for k, v in sorted(result.totals().items()))
    unknown = any(p.unknown for p in result.stages)
    console.print(f"total sbatch calls: {_count(sum(p.arrays for p in result.stages), unknown)}")
    if result.max_array_source:
        console.print(f"array size limit: {result.max_array_size} ({result.max_array_source})")
    console.print(f"total: {totals or '?'} (estimates)")
    if walls:
        wall = result.wall_hours()
        text = f"{wall:,.1f} h ({wall / 24:,.1f} days)" if wall is not None else "?"
        console.print(
            f"wall clock with {result.gpus} GPUs: {text} (estimate: pending units, stage by stage; "
            "at once: tasks the GPUs, array_parallelism and units allow)"
        )


def _count(n: int, unknown: bool) -> str:
    """A count of the plan: ``?`` when a corpus's size is unknown and nothing else is counted, ``N + ?``
    when only some are known (issue 16: an unknown is never shown as 0)."""
    if not unknown:
        return f"{n:,}"
    return f"{n:,} + ?" if n else "?"


def _concurrent_text(p: StagePlan) -> str:
    if p.concurrent is None:
        return "?"
    if p.concurrent == 0 and p.pending:
        return f"0: a task needs {p.gpus_per_task} GPUs"
    return f"{p.concurrent:,}"
