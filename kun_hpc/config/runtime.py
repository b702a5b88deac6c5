"""How a run is laid out and executed: the ``run``, ``shard``, ``reshard``, ``executor`` (with ``slurm``) and
``pipeline`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from kun_hpc.config.checks import check
from kun_hpc.config.choices import EXECUTORS, ExecutorKind

__all__ = [
    "EXECUTORS",
    "ExecutorConfig",
    "PipelineConfig",
    "ReshardConfig",
    "RunConfig",
    "ShardConfig",
    "SlurmConfig",
    "validate_executor",
    "validate_pipeline",
    "validate_reshard",
    "validate_shard",
]


@dataclass
class RunConfig:
    name: str = "demo"  # names the run dir and the merge report
    dir: str = "runs/${run.name}"  # everything of the run: config, shards, stage outputs, logs, merge


@dataclass
class ShardConfig:
    output: str = "${run.dir}/shards"  # shards/<corpus>/part-XXXXX.jsonl.zst
    records_per_shard: int = 10_000  # a shard closes at this many records
    bytes_per_shard: int | None = None  # uncompressed JSONL bytes; whichever limit comes first
    zstd_level: int = 3  # 1 (fast) .. 22 (small)
    split_bytes: int = 256 * 2**20  # a line-based input larger than this is split into pieces across tasks
    max_record_bytes: int = 16 * 2**20  # a longer line/object is quarantined as record_too_large
    max_bad_fraction: float = 1.0  # quarantined / read above this makes the command fail (1.0: never)


@dataclass
class ReshardConfig:
    input: str = "${shard.output}"  # every part-*.jsonl.zst under it, all corpora
    output: str = "${run.dir}/reshard"  # part-XXXXX.jsonl.zst, corpora mixed
    num_shards: int = 8  # records are spread over this many shards by a hash of their id
    zstd_level: int = 3  # 1 (fast) .. 22 (small)
    split_bytes: int = 256 * 2**20  # an input shard larger than this is split into pieces across tasks


@dataclass
class SlurmConfig:
    partition: str | None = None  # sbatch --partition; None: the cluster's default
    account: str | None = None  # sbatch --account
    qos: str | None = None  # sbatch --qos
    time_min: int = 60  # the time limit of each array task, in minutes
    cpus_per_task: int = 1  # sbatch --cpus-per-task
    mem_gb: float = 4.0  # memory per task (sbatch --mem)
    gpus_per_task: int = 0  # sbatch --gpus-per-task; 0: none asked for
    constraint: str | None = None  # sbatch --constraint, e.g. a100
    array_parallelism: int = 256  # the %N throttle of each array
    max_array_size: int | None = None  # None: read the live MaxArraySize from `scontrol show config`
    signal_delay_s: int = 120  # --signal lead time before the time limit
    extra_flags: dict[str, Any] = field(default_factory=dict)  # more sbatch --key=value flags


@dataclass
class ExecutorConfig:
    kind: ExecutorKind = ExecutorKind.local  # one of EXECUTORS
    max_parallel: int = 2  # local: tasks at once
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # default resources of every Slurm job
    # per-stage overrides of the fields above, e.g. {label: {gpus_per_task: 2, time_min: 600}}; "merge" is
    # the merge job that `kun-hpc run` submits after the arrays
    stage_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    poll_interval_s: float = 30.0  # at most one squeue + one sacct call per interval while waiting


@dataclass
class PipelineConfig:
    # stage names in order (see kun_hpc/stages/registry.py), or "package.module:Class" for your own stages
    stages: list[str] = field(default_factory=list)
    # folders your own stages ("package.module:Class") are imported from, after the installed packages;
    # empty: the working directory, filled in at load when a stage is yours, so a run's saved config finds
    # them from any directory (status, logs, workers)
    import_paths: list[str] = field(default_factory=list)
    shards_per_task: int = 1  # a unit is (stage, group of this many shards); amortises model loading
    chunk_records: int = 1000  # a unit commits its output every this many input records
    options: dict[str, Any] = field(default_factory=dict)  # per-stage options of stages without a section
    # measured or expected input records per second per task, for `kun-hpc plan` estimates
    throughput: dict[str, float] = field(default_factory=dict)
    # for `kun-hpc plan` before stages ran: output records per input record of each stage (the next stage's
    # input); the filter cuts documents into units, so its factor may be > 1. Missing stages count as 1.
    expected_keep: dict[str, float] = field(default_factory=dict)


def validate_executor(ex: DictConfig) -> None:
    """The ``executor`` section; its kind is checked at load."""
    check(ex.max_parallel >= 1, "executor.max_parallel", "must be >= 1", ex.max_parallel)
    sl = ex.slurm
    check(sl.time_min >= 1, "executor.slurm.time_min", "must be >= 1", sl.time_min)
    check(sl.array_parallelism >= 1, "executor.slurm.array_parallelism", "must be >= 1",
          sl.array_parallelism)  # fmt: skip


def validate_shard(s: DictConfig) -> None:
    check(s.records_per_shard >= 1, "shard.records_per_shard", "must be >= 1", s.records_per_shard)
    check(s.bytes_per_shard is None or s.bytes_per_shard >= 1, "shard.bytes_per_shard", "must be >= 1",
          s.bytes_per_shard)  # fmt: skip
    check(1 <= s.zstd_level <= 22, "shard.zstd_level", "must be in 1..22", s.zstd_level)
    check(s.split_bytes >= 1, "shard.split_bytes", "must be >= 1", s.split_bytes)
    check(s.max_record_bytes >= 1, "shard.max_record_bytes", "must be >= 1", s.max_record_bytes)
    check(0.0 <= s.max_bad_fraction <= 1.0, "shard.max_bad_fraction", "must be in [0, 1]", s.max_bad_fraction)


def validate_reshard(r: DictConfig) -> None:
    check(r.num_shards >= 1, "reshard.num_shards", "must be >= 1", r.num_shards)
    check(1 <= r.zstd_level <= 22, "reshard.zstd_level", "must be in 1..22", r.zstd_level)
    check(r.split_bytes >= 1, "reshard.split_bytes", "must be >= 1", r.split_bytes)


def validate_pipeline(p: DictConfig) -> None:
    """What `kun-hpc plan` reads of the ``pipeline`` section: funnel fractions and throughputs."""
    for section in ("expected_keep", "throughput"):
        for stage, v in p[section].items():
            check(v is not None and v >= 0, f"pipeline.{section}.{stage}", "must be a number >= 0", v)
