"""One input shard through a stage, in chunks that commit atomically: the exact resume of every stage.

:func:`run_shard_task` streams an input shard through the stage in chunks of ``chunk_records`` input lines.
Each chunk commits atomically (kept records, rejected records, quarantined lines, and a small JSON with its
counts written last); a unit restarted after preemption, ``scontrol requeue`` or ``kill -9`` skips the lines
of committed chunks and goes on, so the final shard equals a fault-free run's, with no record lost or
duplicated. Chunks count *input* lines, and all the units of a record (fan-out) are committed in the chunk of
that record. The last step concatenates the chunks (zstd frames) into the stage's shard, its rejected file
and its quarantine file; the chunk folder stays until the unit's marker is written
(:func:`remove_chunks`), so a unit of several shards that is interrupted in its last shard resumes there,
not at its first shard.

Each commit file holds the chunk's counts, the config hash it was made under (chunks of another config are
discarded, not resumed) and ``timings``: when the attempt that made it started and when the chunk committed.
``kun-hpc status`` and the progress bars read records done and the rate from them
(:mod:`kun_hpc.cluster.rates`, issue 16).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
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


def committed_chunks(output: str, config_hash: str = "") -> list[dict]:
    """The commit files of the chunks already committed for an output shard, in order (counts, and for
    chunks written since issue 16 ``config_hash`` and ``timings``). With ``config_hash``: none when the
    chunks were made under another config hash (they are not this unit's progress)."""
    folder = _chunk_dir(output)
    chunks = []
    while True:
        path = folder / f"chunk-{len(chunks):05d}.json"
        try:
            chunk = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return chunks
        if config_hash and chunk.get("config_hash", config_hash) != config_hash:
            return []
        chunks.append(chunk)


def _delete(folder: Path) -> None:
    """Rename, then delete: a kill while deleting leaves either every commit point or none."""
    trash = folder.with_name(folder.name + ".delete")
    shutil.rmtree(trash, ignore_errors=True)
    if folder.exists():
        folder.rename(trash)
        shutil.rmtree(trash)


def remove_chunks(output: str) -> None:
    """Delete the chunk folder of an output shard (and what a kill while deleting it left): once the unit's
    marker is written, or before a shard is redone under another config."""
    _delete(_chunk_dir(output))


def _write_zst(path: Path, lines: list[bytes]) -> None:
    with atomic_open(path) as f:
        f.write(zstandard.ZstdCompressor(level=3).compress(b"".join(lines)))


def _commit_chunk(
    folder: Path, index: int, kept: list[bytes], rejected: list[bytes], bad: list[bytes], commit: dict
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, lines in (("out", kept), ("rejected", rejected), ("quarantine", bad)):
        _write_zst(folder / f"chunk-{index:05d}.{kind}.zst", lines)
    atomic_write_bytes(folder / f"chunk-{index:05d}.json", orjson.dumps(commit))  # the commit point


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


OnCommit = Callable[[int, Counts], None]  # (chunk index, its counts), after each commit


def run_shard_task(
    stage: Stage,
    task: ShardTask,
    chunk_records: int,
    stage_prov: dict,
    *,
    config_hash: str = "",
    started: float | None = None,
    on_commit: OnCommit | None = None,
) -> dict:
    """Run one input shard through the stage, resuming after the last committed chunk (of ``config_hash``;
    chunks of another config are deleted first); the shard's entry of the unit's marker (where it went, its
    bytes and sha256, its chunks, the resume point: ``resumed_at_chunk`` and ``resumed_records``, and its
    counts). ``started``: when the unit's attempt started (``time.time()``), kept in each commit file.
    ``on_commit`` is called after each commit (the unit's log lines). The chunk folder stays: the unit
    removes it once its marker is written (:func:`remove_chunks`)."""
    folder = _chunk_dir(task.output)
    done = committed_chunks(task.output, config_hash)
    if not done and folder.exists():  # chunks of another config, or none committed
        remove_chunks(task.output)
    resumed_at = len(done)  # > 0 when an interrupted attempt had committed chunks
    skip = sum(c["in"] for c in done)
    started = time.time() if started is None else started
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
        commit = {
            **counts.to_dict(),
            "config_hash": config_hash,
            "timings": {"start": started, "end": time.time()},
        }
        _commit_chunk(folder, index, kept, rejected, chunk.bad, commit)
        if on_commit is not None:
            on_commit(index, counts)
        index += 1
    chunks = committed_chunks(task.output)
    parts = sorted(folder.glob("chunk-*.out.zst"))
    nbytes, sha = _concat(parts, task.output)
    _concat(sorted(folder.glob("chunk-*.rejected.zst")), task.rejected)
    _concat(sorted(folder.glob("chunk-*.quarantine.zst")), task.quarantine)
    total = sum((Counts.from_dict(c) for c in chunks), Counts(units=Units(), stats={}))
    total.check(task.output)
    return {
        "input": task.input,
        "output": task.output,
        "bytes": nbytes,
        "sha256": sha,
        "chunks": len(chunks),
        "resumed_at_chunk": resumed_at,
        "resumed_records": skip,
        **total.to_dict(),
    }
