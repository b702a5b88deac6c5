"""``kun-hpc reshard``: N shards -> M shards, deterministic and stable.

A record goes to shard ``xxh3_64(id) % M``: its destination depends on its id alone. Inside a
destination, records keep the order of the input pieces they came from, and input pieces are defined by
the input files and ``split_bytes`` alone, never by the task count. So any number of tasks gives
byte-identical shards.

Map: one unit per input piece writes one file of zstd frames, each frame holding the piece's records for
one destination, plus an index ``(dest, offset, length, records)``. Merge: a unit per range of
destinations concatenates, in unit order, the frames each unit wrote for it (concatenated zstd frames
are one valid zstd stream) and writes ``part-XXXXX.jsonl.zst`` atomically. Memory per task is bounded by
``flush_bytes`` whatever the input size.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import xxhash
import zstandard
from omegaconf import DictConfig

from kun_hpc.config import config_hash
from kun_hpc.config.outputs import output_values
from kun_hpc.core.counts import Counts
from kun_hpc.core.unit_log import UnitLog, counts_text
from kun_hpc.io.atomic import atomic_open, atomic_write_bytes
from kun_hpc.io.quarantine import Bad, Quarantine
from kun_hpc.io.readers import InputPiece, piece_lines, plan_pieces, too_long_bad
from kun_hpc.io.shards import (
    MANIFEST,
    ShardInfo,
    input_info,
    list_shards,
    read_manifest,
    shard_name,
    write_manifest,
)
from kun_hpc.io.streams import HashingWriter, LineTooLong
from kun_hpc.stages.shard import QUARANTINE, WORK, load_marker
from kun_hpc.stages.steps import Array, Step
from kun_hpc.stages.summary import StepReport, failed_units_message

FLUSH_BYTES = 64 * 2**20
MERGE_DESTS_PER_UNIT = 64


def destination(record_id: str, num_shards: int) -> int:
    return xxhash.xxh3_64_intdigest(record_id.encode()) % num_shards


@dataclass(frozen=True)
class SplitUnit:
    unit: str
    piece: InputPiece
    work: str
    config_hash: str
    num_shards: int
    zstd_level: int
    max_record_bytes: int
    flush_bytes: int = FLUSH_BYTES


@dataclass(frozen=True)
class MergeUnit:
    unit: str
    dests: tuple[int, int]  # [first, last)
    split_units: tuple[str, ...]
    work: str
    out: str
    config_hash: str


def split_unit(u: SplitUnit) -> dict:
    """Route one input piece's records to their destinations as zstd frames; commit a marker."""
    work = Path(u.work)
    done = load_marker(work, u.unit, u.config_hash)
    if done is not None:
        return done
    log = UnitLog(f"reshard-{u.unit}")
    piece = f"{u.piece.path} piece {u.piece.index + 1}/{u.piece.count}"
    log.start(f"reshard split, {piece} -> {work / u.unit}.frames, from the first record")
    with log:
        marker = _split(u, work)
    log.records = marker["read"]
    log.end(f"{counts_text(Counts.from_shard_marker(marker))}, {len(marker['index'])} frames")
    return marker


def _split(u: SplitUnit, work: Path) -> dict:
    comp = zstandard.ZstdCompressor(level=u.zstd_level)
    quarantine = Quarantine(work / QUARANTINE / f"{u.unit}.jsonl.zst")
    buffers: dict[int, list[bytes]] = {}
    index: list[tuple[int, int, int, int]] = []  # dest, offset, length, records
    buffered = read = written = 0
    source = u.piece.label
    with atomic_open(work / f"{u.unit}.frames") as f:
        offset = 0

        def flush() -> None:
            nonlocal offset, buffered
            for dest in sorted(buffers):
                lines = buffers[dest]
                frame = comp.compress(b"\n".join(lines) + b"\n")  # lines are kept without their newline
                f.write(frame)
                index.append((dest, offset, len(frame), len(lines)))
                offset += len(frame)
            buffers.clear()
            buffered = 0

        # the per-record loop: names bound locally; destination() inlined
        loads, decode_error, h64 = orjson.loads, orjson.JSONDecodeError, xxhash.xxh3_64_intdigest
        num_shards, flush_bytes = u.num_shards, u.flush_bytes
        for item in piece_lines(u.piece, u.max_record_bytes):
            read += 1
            if type(item) is Bad:
                quarantine.add(item)
                continue
            where, line = item
            if type(line) is LineTooLong:
                quarantine.add(too_long_bad(source, where, line, u.max_record_bytes))
                continue
            try:
                rid = loads(line)["id"]
                if type(rid) is not str:
                    raise TypeError("'id' is not a string")
            except (decode_error, KeyError, TypeError) as e:
                quarantine.add(Bad(source, where, "invalid_record", f"{type(e).__name__}: {e}", line))
                continue
            dest = h64(rid.encode()) % num_shards  # == destination(rid, num_shards)
            lines = buffers.get(dest)
            if lines is None:
                lines = buffers[dest] = []
            lines.append(line)
            written += 1
            buffered += len(line) + 1
            if buffered >= flush_bytes:
                flush()
        flush()
    quarantine.close()
    counts = Counts(read, written, quarantined=quarantine.counts)
    counts.check(u.unit)
    marker = {
        "unit": u.unit,
        "input": source,
        "config_hash": u.config_hash,
        **counts.to_shard_marker(),
        "index": index,
    }
    atomic_write_bytes(work / f"{u.unit}.done.json", orjson.dumps(marker))
    return marker


def merge_unit(u: MergeUnit) -> dict:
    """Concatenate, for each destination in range, the frames every split unit wrote for it."""
    work = Path(u.work)
    done = load_marker(work, u.unit, u.config_hash)
    if done is not None:
        return done
    log = UnitLog(f"reshard-{u.unit}")
    first, last = u.dests
    log.start(
        f"reshard merge, the frames of {len(u.split_units)} split units -> {u.out} part {first}..{last - 1}"
    )
    with log:
        marker = _merge(u, work)
    log.records = sum(s["records"] for s in marker["shards"])
    log.end(f"{len(marker['shards'])} shards, {log.records} records")
    return marker


def _merge(u: MergeUnit, work: Path) -> dict:
    first, last = u.dests
    plan: dict[int, list[tuple[str, int, int, int]]] = {d: [] for d in range(first, last)}
    for s in u.split_units:
        marker = orjson.loads((work / f"{s}.done.json").read_bytes())
        for dest, offset, length, records in marker["index"]:
            if first <= dest < last:
                plan[dest].append((s, offset, length, records))
    shards = []
    handles: dict[str, object] = {}
    try:
        for dest in range(first, last):
            with atomic_open(Path(u.out) / shard_name(dest)) as raw:
                out = HashingWriter(raw)
                records = 0
                for s, offset, length, n in plan[dest]:
                    fh = handles.get(s) or handles.setdefault(s, open(work / f"{s}.frames", "rb"))  # noqa: SIM115
                    fh.seek(offset)
                    out.write(fh.read(length))
                    records += n
            shards.append(asdict(ShardInfo(shard_name(dest), records, out.nbytes, out.sha256.hexdigest())))
    finally:
        for fh in handles.values():
            fh.close()
    marker = {"unit": u.unit, "config_hash": u.config_hash, "shards": shards}
    atomic_write_bytes(work / f"{u.unit}.done.json", orjson.dumps(marker))
    return marker


def reshard_config_hash(cfg: DictConfig, files: list[Path]) -> str:
    """What decides the reshard's records: its input shards and the ``reshard`` keys that change output
    (:mod:`kun_hpc.config.outputs`: not where it goes nor how it is compressed); ``reshard.input`` as the
    shard files found there (relative to it)."""
    section = output_values(cfg.reshard, "reshard")
    section.pop("input")
    return config_hash({"inputs": [str(p.relative_to(cfg.reshard.input)) for p in files], **section})


def run_reshard(cfg: DictConfig) -> Step:
    """Reshard ``reshard.input`` into ``reshard.num_shards`` shards (a :mod:`~kun_hpc.stages.steps` step:
    a split array, then a merge array); returns its report."""
    r = cfg.reshard
    src, out = Path(r.input), Path(r.output)
    files = [p for p in list_shards(src) if out not in p.parents]
    if not files:
        raise FileNotFoundError(f"reshard.input: no part-*.jsonl.zst shards under {src}")
    cfg_hash = reshard_config_hash(cfg, files)
    name = f"reshard {src.name} -> {r.num_shards}"
    if (out / MANIFEST).exists() and read_manifest(out).get("config_hash") == cfg_hash:
        return [StepReport.from_manifest(name, read_manifest(out), skipped=True)]
    work = out / WORK
    pieces = plan_pieces(files, "jsonl", r.split_bytes)
    file_index = {str(p): i for i, p in enumerate(files)}
    splits = [
        SplitUnit(
            f"s{file_index[p.path]:05d}-{p.index:04d}",
            p,
            str(work),
            cfg_hash,
            r.num_shards,
            r.zstd_level,
            cfg.shard.max_record_bytes,
        )
        for p in pieces
    ]
    yield from _run(split_unit, splits, work, cfg_hash, name + " (split)")
    split_ids = tuple(s.unit for s in splits)
    merges = [
        MergeUnit(
            f"m{d:05d}",
            (d, min(d + MERGE_DESTS_PER_UNIT, r.num_shards)),
            split_ids,
            str(work),
            str(out),
            cfg_hash,
        )
        for d in range(0, r.num_shards, MERGE_DESTS_PER_UNIT)
    ]
    for old in out.glob("part-*.jsonl.zst"):
        if int(old.name[5:10]) >= r.num_shards:
            old.unlink()
    yield from _run(merge_unit, merges, work, cfg_hash, name + " (merge)")
    split_markers = [load_marker(work, s.unit, cfg_hash) for s in splits]
    shards = [ShardInfo(**s) for m in merges for s in load_marker(work, m.unit, cfg_hash)["shards"]]
    (out / QUARANTINE).mkdir(parents=True, exist_ok=True)
    for s in splits:
        q = work / QUARANTINE / f"{s.unit}.jsonl.zst"
        if q.exists():
            q.replace(out / QUARANTINE / q.name)
    total = sum((Counts.from_shard_marker(m) for m in split_markers), Counts())
    counts = Counter(p.path for p in pieces)
    manifest = write_manifest(
        out,
        shards=shards,
        inputs=[input_info(f, counts[str(f)]) for f in files],
        config_hash=cfg_hash,
        read=total.in_,
        quarantined=dict(total.quarantined),
        extra={"num_shards": r.num_shards, "routing": "xxh3_64(id) % num_shards"},
    )
    shutil.rmtree(work)
    reports = [StepReport.from_manifest(name, manifest)]
    return reports


def _run(fn, units: list, work: Path, cfg_hash: str, name: str) -> Step:
    todo = [u for u in units if load_marker(work, u.unit, cfg_hash) is None]
    failed = [o for o in (yield Array(fn, todo, name, "reshard")) if not o.ok]
    if failed:
        raise RuntimeError(failed_units_message(name, failed, len(units)))
