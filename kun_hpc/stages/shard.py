"""``kun-hpc shard``: native corpus files -> ``<output>/<corpus>/part-XXXXX.jsonl.zst`` + manifest.

Map: one unit per input piece (a file, or a byte/line range of a big one) writes its own run of shards
and a marker with its counts into ``<output>/<corpus>/_work``. Finalize: parts are renamed to one global
numbering in unit order, quarantine files are collected, and ``manifest.json`` is written. A re-run
skips units with a valid marker, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from omegaconf import DictConfig, OmegaConf

from kun_hpc.cluster.executors import Executor
from kun_hpc.config import config_hash
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.quarantine import Quarantine
from kun_hpc.io.readers import Fields, InputPiece, expand_paths, fields_for, plan_pieces, read_piece
from kun_hpc.io.shards import (
    MANIFEST,
    RollingShardWriter,
    ShardInfo,
    input_info,
    read_manifest,
    shard_name,
    write_manifest,
)
from kun_hpc.stages.summary import StepReport, failed_units_message

WORK = "_work"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class ShardUnit:
    """Everything one task needs to shard one input piece (picklable, executor-agnostic)."""

    unit: str
    corpus: str
    fmt: str
    fields: Fields
    piece: InputPiece
    work: str
    config_hash: str
    records_per_shard: int
    bytes_per_shard: int | None
    zstd_level: int
    max_record_bytes: int


def _marker(work: Path, unit: str) -> Path:
    return work / f"{unit}.done.json"


def load_marker(work: Path, unit: str, cfg_hash: str) -> dict | None:
    """A unit's marker, if it exists and was written under the same config hash."""
    path = _marker(work, unit)
    if not path.exists():
        return None
    marker = orjson.loads(path.read_bytes())
    return marker if marker.get("config_hash") == cfg_hash else None


def shard_unit(u: ShardUnit) -> dict:
    """Read one input piece, write its shards and quarantine, and commit a marker. Idempotent."""
    work = Path(u.work)
    done = load_marker(work, u.unit, u.config_hash)
    if done is not None:
        return done
    out = work / u.unit
    shutil.rmtree(out, ignore_errors=True)  # leftovers of an interrupted attempt
    writer = RollingShardWriter(out, u.records_per_shard, u.bytes_per_shard, u.zstd_level)
    quarantine = Quarantine(work / QUARANTINE / f"{u.unit}.jsonl.zst")
    read = 0
    write, add = writer.write, quarantine.add
    try:
        for item in read_piece(u.piece, u.corpus, u.fmt, u.fields, u.max_record_bytes):
            read += 1
            if type(item) is dict:
                write(item)
            else:
                add(item)
    except BaseException:
        writer.abort()
        raise
    shards = writer.close()
    quarantine.close()
    written = sum(s.records for s in shards)
    if read != written + quarantine.total:  # would be a bug in a reader or writer, never bad input
        raise RuntimeError(f"{u.unit}: accounting broken: read {read} != {written} + {quarantine.total}")
    marker = {
        "unit": u.unit,
        "input": u.piece.label,
        "config_hash": u.config_hash,
        "read": read,
        "records": written,
        "quarantined": dict(quarantine.counts),
        "shards": [asdict(s) for s in shards],
    }
    atomic_write_bytes(_marker(work, u.unit), orjson.dumps(marker))
    return marker


def plan_corpus(cfg: DictConfig, corpus: DictConfig) -> tuple[list[ShardUnit], list[dict]]:
    s = cfg.shard
    files = expand_paths(list(corpus.paths), corpus.format)
    pieces = plan_pieces(files, corpus.format, s.split_bytes)
    fields = fields_for(corpus.format, corpus.text_field, corpus.id_field, tuple(corpus.meta_fields))
    cfg_hash = shard_config_hash(cfg, corpus)
    work = Path(s.output) / corpus.name / WORK
    file_index = {p: i for i, p in enumerate(files)}
    units = [
        ShardUnit(
            unit=f"u{file_index[Path(p.path)]:05d}-{p.index:04d}",
            corpus=corpus.name,
            fmt=corpus.format,
            fields=fields,
            piece=p,
            work=str(work),
            config_hash=cfg_hash,
            records_per_shard=s.records_per_shard,
            bytes_per_shard=s.bytes_per_shard,
            zstd_level=s.zstd_level,
            max_record_bytes=s.max_record_bytes,
        )
        for p in pieces
    ]
    counts = Counter(p.path for p in pieces)
    inputs = [input_info(f, counts[str(f)]) for f in files]
    return units, inputs


def shard_config_hash(cfg: DictConfig, corpus: DictConfig) -> str:
    """What decides the bytes of a corpus's shards (not where they go, nor how failures are judged)."""
    s = cfg.shard
    keep = ("name", "format", "paths", "text_field", "id_field", "meta_fields")
    return config_hash(
        {
            "corpus": {k: OmegaConf.to_container(corpus)[k] for k in keep},
            "shard": [
                s.records_per_shard,
                s.bytes_per_shard,
                s.zstd_level,
                s.split_bytes,
                s.max_record_bytes,
            ],
        }
    )


def finalize(
    out: Path, units: list[ShardUnit], markers: list[dict], inputs: list[dict], cfg_hash: str
) -> dict:
    """Give the units' parts one numbering in unit order, gather quarantine, write the manifest."""
    work = out / WORK
    shards: list[ShardInfo] = []
    quarantined: Counter[str] = Counter()
    for old in out.glob("part-*.jsonl.zst"):
        old.unlink()
    (out / QUARANTINE).mkdir(parents=True, exist_ok=True)
    for u, m in zip(units, markers, strict=True):
        for s in m["shards"]:
            info = ShardInfo(**s)
            info.name = shard_name(len(shards))
            (work / u.unit / s["name"]).replace(out / info.name)
            shards.append(info)
        quarantined.update(m["quarantined"])
        q = work / QUARANTINE / f"{u.unit}.jsonl.zst"
        if q.exists():
            q.replace(out / QUARANTINE / q.name)
    manifest = write_manifest(
        out,
        shards=shards,
        inputs=inputs,
        config_hash=cfg_hash,
        read=sum(m["read"] for m in markers),
        quarantined=dict(quarantined),
        extra={"corpus": units[0].corpus if units else out.name},
    )
    shutil.rmtree(work)
    return manifest


def run_shard(cfg: DictConfig, executor: Executor, log_dir: Path) -> list[StepReport]:
    """Shard every configured corpus; returns one report per corpus."""
    reports = []
    for corpus in cfg.corpora:
        out = Path(cfg.shard.output) / corpus.name
        units, inputs = plan_corpus(cfg, corpus)
        cfg_hash = units[0].config_hash if units else shard_config_hash(cfg, corpus)
        if (out / MANIFEST).exists() and read_manifest(out).get("config_hash") == cfg_hash:
            reports.append(StepReport.from_manifest(f"shard {corpus.name}", read_manifest(out), skipped=True))
            continue
        work = out / WORK
        todo = [u for u in units if load_marker(work, u.unit, cfg_hash) is None]
        outcomes = executor.map(shard_unit, todo, name=f"shard-{corpus.name}", log_dir=log_dir)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise RuntimeError(failed_units_message(f"shard {corpus.name}", failed, len(units)))
        markers = [load_marker(work, u.unit, cfg_hash) for u in units]
        manifest = finalize(out, units, markers, inputs, cfg_hash)  # type: ignore[arg-type]
        reports.append(StepReport.from_manifest(f"shard {corpus.name}", manifest))
    return reports
