"""Run configuration: OmegaConf structured configs, YAML presets, ``key=value`` overrides.

A config is loaded from a YAML preset in ``configs/`` merged over the dataclass defaults below, then
``key=value`` overrides from the command line. Type errors and unknown keys are reported by OmegaConf
with the full key path; semantic checks in :func:`validate` name the bad key too. The resolved config and
its hash are saved in each run directory (:func:`save_resolved`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kun_hpc.io.atomic import atomic_write_bytes

DEFAULT_PRESET = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
CORPUS_FORMATS = ("wudao", "wanjuan", "skypile", "jsonl")
EXECUTORS = ("local", "slurm", "inline")


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


@dataclass
class CorpusConfig:
    name: str = MISSING
    format: str = MISSING  # one of CORPUS_FORMATS
    paths: list[str] = MISSING  # files, folders or globs; relative paths are relative to the working dir
    text_field: str = "text"  # jsonl only: where the text is
    id_field: str | None = None  # jsonl only: native id field; None: content hash
    meta_fields: list[str] = field(default_factory=list)  # jsonl only: native fields kept under "meta"
    license: str = ""


@dataclass
class ShardConfig:
    output: str = "${run.dir}/shards"  # shards/<corpus>/part-XXXXX.jsonl.zst
    records_per_shard: int = 10_000
    bytes_per_shard: int | None = None  # uncompressed JSONL bytes; whichever limit comes first
    zstd_level: int = 3
    split_bytes: int = 256 * 2**20  # a line-based input larger than this is split into pieces across tasks
    max_record_bytes: int = 16 * 2**20  # a longer line/object is quarantined as record_too_large
    max_bad_fraction: float = 1.0  # quarantined / read above this makes the command fail (1.0: never)


@dataclass
class ReshardConfig:
    input: str = "${shard.output}"  # every part-*.jsonl.zst under it, all corpora
    output: str = "${run.dir}/reshard"
    num_shards: int = 8
    zstd_level: int = 3
    split_bytes: int = 256 * 2**20


@dataclass
class SlurmConfig:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    gpus_per_task: int = 0
    constraint: str | None = None
    array_parallelism: int = 256  # the %N throttle of each array
    max_array_size: int | None = None  # None: read the live MaxArraySize from `scontrol show config`
    signal_delay_s: int = 120  # --signal lead time before the time limit
    extra_flags: dict[str, Any] = field(default_factory=dict)  # more sbatch --key=value flags


@dataclass
class ExecutorConfig:
    kind: str = "local"  # one of EXECUTORS
    max_parallel: int = 2  # local: tasks at once
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # default resources of every Slurm job
    # per-stage overrides of the fields above, e.g. {label: {gpus_per_task: 2, time_min: 600}}
    stage_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    poll_interval_s: float = 10.0  # at most one squeue + one sacct call per interval while waiting


@dataclass
class PipelineConfig:
    # stage names in order (see kun_hpc/pipeline.py), or "package.module:Class" for your own stages
    stages: list[str] = field(default_factory=list)
    shards_per_task: int = 1  # a unit is (stage, group of this many shards); amortises model loading
    chunk_records: int = 1000  # a unit commits its output every this many input records
    options: dict[str, Any] = field(default_factory=dict)  # per-stage options of stages without a section
    # measured or expected input records per second per task, for `kun-hpc plan` estimates
    throughput: dict[str, float] = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str = "demo"
    dir: str = "runs/${run.name}"


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    corpora: list[CorpusConfig] = field(default_factory=list)
    shard: ShardConfig = field(default_factory=ShardConfig)
    reshard: ReshardConfig = field(default_factory=ReshardConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


def load(preset: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Defaults <- YAML preset <- ``key=value`` overrides, validated and resolved.

    Without a preset, ``configs/default.yaml`` (the bundled sample on the local executor) is used.
    """
    if preset is None and DEFAULT_PRESET.is_file():
        preset = DEFAULT_PRESET
    try:
        cfg = OmegaConf.structured(Config)
        if preset is not None:
            path = Path(preset)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must be key=value, got: {' '.join(bad)}")
            for item in overrides:
                key, _, value = item.partition("=")
                OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=True)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e)) from None
    validate(cfg)
    return cfg


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    return f"config key '{key}': {msg}" if key else f"config: {msg}"


def _check(ok: bool, key: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {why} (got {value!r})")


def validate(cfg: DictConfig) -> None:
    """Semantic checks that types alone do not catch; each error names its key."""
    _check(cfg.executor.kind in EXECUTORS, "executor.kind", f"must be one of {EXECUTORS}", cfg.executor.kind)
    _check(cfg.executor.max_parallel >= 1, "executor.max_parallel", "must be >= 1", cfg.executor.max_parallel)
    names = [c.name for c in cfg.corpora]
    for i, c in enumerate(cfg.corpora):
        _check(
            c.format in CORPUS_FORMATS, f"corpora.{i}.format", f"must be one of {CORPUS_FORMATS}", c.format
        )
        _check(bool(c.paths), f"corpora.{i}.paths", "must list at least one path", c.paths)
        _check(names.count(c.name) == 1, f"corpora.{i}.name", "must be unique", c.name)
        _check(
            c.name.replace("_", "").replace("-", "").isalnum(),
            f"corpora.{i}.name",
            "must be letters, digits, '-' or '_'",
            c.name,
        )
    s = cfg.shard
    _check(s.records_per_shard >= 1, "shard.records_per_shard", "must be >= 1", s.records_per_shard)
    _check(
        s.bytes_per_shard is None or s.bytes_per_shard >= 1,
        "shard.bytes_per_shard",
        "must be >= 1",
        s.bytes_per_shard,
    )
    _check(1 <= s.zstd_level <= 22, "shard.zstd_level", "must be in 1..22", s.zstd_level)
    _check(s.split_bytes >= 1, "shard.split_bytes", "must be >= 1", s.split_bytes)
    _check(s.max_record_bytes >= 1, "shard.max_record_bytes", "must be >= 1", s.max_record_bytes)
    _check(
        0.0 <= s.max_bad_fraction <= 1.0, "shard.max_bad_fraction", "must be in [0, 1]", s.max_bad_fraction
    )
    r = cfg.reshard
    _check(r.num_shards >= 1, "reshard.num_shards", "must be >= 1", r.num_shards)
    _check(1 <= r.zstd_level <= 22, "reshard.zstd_level", "must be in 1..22", r.zstd_level)
    _check(r.split_bytes >= 1, "reshard.split_bytes", "must be >= 1", r.split_bytes)
    sl = cfg.executor.slurm
    _check(sl.time_min >= 1, "executor.slurm.time_min", "must be >= 1", sl.time_min)
    _check(
        sl.array_parallelism >= 1, "executor.slurm.array_parallelism", "must be >= 1", sl.array_parallelism
    )


def to_yaml(cfg: DictConfig | Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)


def config_hash(section: DictConfig | Any) -> str:
    """Stable short hash of a (sub)config: same values, same hash, whatever the key order."""
    text = to_yaml(section) if isinstance(section, DictConfig) else repr(section)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_resolved(cfg: DictConfig, run_dir: str | Path) -> str:
    """Write ``config.yaml`` and ``config.sha256`` into the run dir; return the hash."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = to_yaml(cfg)
    digest = config_hash(cfg)

    atomic_write_bytes(run_dir / "config.yaml", text.encode())
    atomic_write_bytes(run_dir / "config.sha256", (digest + "\n").encode())
    return digest
