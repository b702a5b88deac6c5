"""One input shard through a stage, in chunks that commit atomically: the exact resume of every stage.

:func:`run_shard_task` streams an input shard through the stage in chunks of ``chunk_records`` input lines.
Each chunk commits atomically (kept records, rejected records, quarantined lines, and a small JSON with its
counts written last); a unit restarted after preemption, ``scontrol requeue`` or ``kill -9`` skips the lines
of committed chunks and goes on, so the final shard equals a fault-free run's, with no record lost or
duplicated. Chunks count *input* lines, and all the units of a record (fan-out) are committed in the chunk of
that record. The last step concatenates the chunks (zstd frames) into the stage's shard, its rejected file
and its quarantine file.
"""

from __future__ import annotations

import shutil
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import zstandard

from kun_hpc.core.counts import Counts, Units
from kun_hpc.core.records import Rejected
from kun_hpc.io.atomic import atomic_open, atomic_write_bytes
from kun_hpc.io.quarantine import Bad
from kun_hpc.io.readers import InputPiece, piece_lines, too_long_bad
from kun_hpc.io.streams import HashingWriter, LineTooLong
from kun_hpc.stages.base import ShardTask, Stage


def _chunk_dir(output: str) -> Path:
    return Path(output + ".chunks")


def committed_chunks(output: str) -> list[dict]:
    """Counts of the chunks already committed for an output shard, in order."""
    folder = _chunk_dir(output)
    chunks = []
    while True:
        path = folder / f"chunk-{len(chunks):05d}.json"
        if not path.exists():
            return chunks
        chunks.append(orjson.loads(path.read_bytes()))


def _write_zst(path: Path, lines: list[bytes]) -> None:
    with atomic_open(path) as f:
        f.write(zstandard.ZstdCompressor(level=3).compress(b"".join(lines)))


def _commit_chunk(
    folder: Path, index: int, kept: list[bytes], rejected: list[bytes], bad: list[bytes], counts: Counts
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, lines in (("out", kept), ("rejected", rejected), ("quarantine", bad)):
        _write_zst(folder / f"chunk-{index:05d}.{kind}.zst", lines)
    atomic_write_bytes(folder / f"chunk-{index:05d}.json", orjson.dumps(counts.to_dict()))  # the commit point


def _concat(parts: list[Path], dest: str) -> tuple[int, str]:
    """Concatenate zstd files (frames) into dest atomically; return (bytes, sha256)."""
    with atomic_open(dest) as raw:
        out = HashingWriter(raw)
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
    return out.nbytes, out.sha256.hexdigest()


def input_items(path: str) -> Iterator[tuple[str, bytes] | Bad]:
    """The lines of a shard as ``(position, line)``, or a :class:`Bad` for one that cannot be read."""
    piece = InputPiece(path)
    for item in piece_lines(piece, 1 << 30):
        if type(item) is Bad:
            yield item
            continue
        where, line = item
        if type(line) is LineTooLong:
            yield too_long_bad(piece.label, where, line, 1 << 30)
        else:
            yield where, line


@dataclass
class _Chunk:
    """Input lines of one chunk: the parsed records and the bad lines (quarantined)."""

    n_in: int
    batch: list[dict]
    bad: list[bytes]
    bad_counts: Counter


def _read_chunks(
    items: Iterator[tuple[str, bytes] | Bad], source: str, size: int, first: bool
) -> Iterator[_Chunk]:
    """Chunks of ``size`` input lines (an empty one only when the whole input is empty and nothing was
    committed before, so that an empty shard still gets its output)."""
    exhausted = False
    while not exhausted:
        chunk = _Chunk(0, [], [], Counter())
        for item in items:
            chunk.n_in += 1
            if type(item) is Bad:
                chunk.bad.append(orjson.dumps(item.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
                chunk.bad_counts[item.reason] += 1
            else:
                where, line = item
                try:
                    chunk.batch.append(orjson.loads(line))
                except orjson.JSONDecodeError as e:
                    b = Bad(source, where, "invalid_json", str(e), line)
                    chunk.bad.append(orjson.dumps(b.to_dict(), option=orjson.OPT_APPEND_NEWLINE))
                    chunk.bad_counts[b.reason] += 1
            if chunk.n_in >= size:
                break
        else:
            exhausted = True
        if chunk.n_in == 0 and not first:
            return
        first = False
        yield chunk


def run_shard_task(stage: Stage, task: ShardTask, chunk_records: int, stage_prov: dict) -> dict:
    """Run one input shard through the stage, resuming after the last committed chunk; the shard's entry
    of the unit's marker (where it went, its bytes and sha256, its chunks, and its counts)."""
    folder = _chunk_dir(task.output)
    done = committed_chunks(task.output)
    resumed_at = len(done)  # > 0 when an interrupted attempt had committed chunks
    skip = sum(c["in"] for c in done)
    items = input_items(task.input)
    for _ in range(skip):
        next(items)
    index = len(done)
    read: deque[_Chunk] = deque()  # chunks handed to the stage whose results have not come back yet

    def batches() -> Iterator[list[dict]]:
        for chunk in _read_chunks(items, Path(task.input).name, chunk_records, first=index == 0):
            read.append(chunk)
            yield chunk.batch

    for results in stage.process_stream(batches()):
        chunk = read.popleft()
        if len(results) != len(chunk.batch):
            raise RuntimeError(
                f"stage {stage.name}: process() returned {len(results)} results for {len(chunk.batch)}"
            )
        counts = Counts(chunk.n_in, quarantined=chunk.bad_counts, units=Units())
        kept, rejected, flat = [], [], []
        for res in results:
            outs = res if isinstance(res, list) else [res]
            if not outs:
                raise RuntimeError(f"stage {stage.name}: process() returned no output for a record")
            why: set[str] = set()
            flat += outs
            for o in outs:
                counts.units.made += 1
                if type(o) is Rejected:
                    counts.units.rejected[o.reason] += 1
                    why.add(o.reason)
                    reject = {"stage": stage.name, "reason": o.reason, "detail": o.detail}
                    row = {**o.record, "reject": reject}
                    rejected.append(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
                else:
                    if stage_prov:
                        o.setdefault("prov", {})[stage.name] = stage_prov
                    kept.append(orjson.dumps(o, option=orjson.OPT_APPEND_NEWLINE))
            if any(type(o) is not Rejected for o in outs):
                counts.out += 1
            else:
                counts.rejected["+".join(sorted(why))] += 1
        counts.units.out = len(kept)
        counts.stats = stage.chunk_stats(flat) or None
        _commit_chunk(folder, index, kept, rejected, chunk.bad, counts)
        index += 1
    chunks = committed_chunks(task.output)
    parts = sorted(folder.glob("chunk-*.out.zst"))
    nbytes, sha = _concat(parts, task.output)
    _concat(sorted(folder.glob("chunk-*.rejected.zst")), task.rejected)
    _concat(sorted(folder.glob("chunk-*.quarantine.zst")), task.quarantine)
    # Renamed first, in one step: a kill while deleting must not leave commit points whose record files
    # are gone (a restart would concatenate what is left over the complete shard). Without the folder,
    # a restart redoes the shard from its first line.
    trash = folder.with_name(folder.name + ".delete")
    shutil.rmtree(trash, ignore_errors=True)
    folder.rename(trash)
    shutil.rmtree(trash)
    total = sum((Counts.from_dict(c) for c in chunks), Counts(units=Units(), stats={}))
    total.check(task.output)
    return {
        "input": task.input,
        "output": task.output,
        "bytes": nbytes,
        "sha256": sha,
        "chunks": len(chunks),
        "resumed_at_chunk": resumed_at,
        **total.to_dict(),
    }
