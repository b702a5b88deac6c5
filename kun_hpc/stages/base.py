"""What a pipeline stage is, and how one unit of it runs with chunked commits.

A stage is a small class: ``setup()`` once per unit (load a model), ``process(batch)`` returning, for
each input record, the record to keep (with the fields the stage adds) or a :class:`Rejected` with a
reason code, and ``close()``. Stages never know which executor runs them.

Fan-out: a stage may instead return, for an input record, a *list* of outputs (each a record to keep or a
:class:`Rejected`); the filter stage cuts one document into many units this way. Every element, bare or in
a list, is one *unit* of output; a record must yield at least one (drop it with a reason, never silently).
Accounting then holds at two levels, in every chunk and every marker:

* records: ``in == out + sum(rejected) + sum(quarantined)``, where a record is ``out`` when at least one of
  its units was kept, and ``rejected`` when none was -- under its units' reason, or ``a+b`` (sorted, joined
  by ``+``) when they were rejected for different reasons;
* units: ``units.made == units.out + sum(units.rejected)``; ``units.out`` is the number of lines written to
  the output shard (the next stage's ``in``) and ``units.rejected`` counts the lines of the rejected file by
  reason.

For a one-result-per-record stage both levels coincide. Chunks still count *input* lines, and all the units
of a record are committed in the chunk of that record, so resuming after a committed chunk is exact.

``before_run`` (a classmethod) runs once in the submitting process before a ``run`` submits the grid, with
the executor: for cluster-wide preparation such as the filter's percentile calibration.

:func:`run_unit` streams each input shard of a unit through the stage in chunks of ``chunk_records``
input lines. Each chunk commits atomically (kept records, rejected records, quarantined lines, and a
small JSON with its counts written last); a unit restarted after preemption, ``scontrol requeue`` or
``kill -9`` skips the lines of committed chunks and goes on, so the final shard equals a fault-free
run's, with no record lost or duplicated. The last step concatenates the chunks (zstd frames) into
the stage's shard and writes the unit's completion marker.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard
from omegaconf import DictConfig

from kun_hpc.io.atomic import atomic_open, atomic_write_bytes
from kun_hpc.io.quarantine import Bad
from kun_hpc.io.readers import InputPiece, piece_lines, too_long_bad
from kun_hpc.io.streams import HashingWriter, LineTooLong


@dataclass
class Rejected:
    """A record a stage drops, and why (a short reason code such as ``too_long``)."""

    record: dict
    reason: str
    detail: str = ""


class Stage:
    """Base class of pipeline stages; subclasses set ``name`` and implement :meth:`process`."""

    name = "stage"

    def __init__(self, cfg: DictConfig, options: dict[str, Any] | None = None):
        self.cfg = cfg
        self.options = options or {}

    def setup(self) -> None:
        """Once per unit, before the first batch (load models here)."""

    def process(self, batch: list[dict]) -> list[dict | Rejected | list[dict | Rejected]]:
        """One entry per input record, in order: a record, a :class:`Rejected`, or a non-empty list of
        them (fan-out)."""
        raise NotImplementedError

    def process_stream(
        self, batches: Iterator[list[dict]]
    ) -> Iterator[list[dict | Rejected | list[dict | Rejected]]]:
        """:meth:`process` over a stream of batches (the chunks of a shard), one result list per batch, in
        order. ``batches`` is read lazily: a stage may read the next batch before returning the results of
        the one before (the LLM stages keep the engine busy across chunk boundaries this way)."""
        for batch in batches:
            yield self.process(batch) if batch else []

    def close(self) -> None:
        """Once per unit, after the last batch."""

    def chunk_stats(self, outputs: list[dict | Rejected]) -> dict:
        """Measures of one chunk's outputs (every kept record and :class:`Rejected`, in order) as nested dicts
        of numbers that add up over chunks, shards and units (:func:`add_stats`): stored under ``stats`` in
        the chunk's counts, the shard's entry and the unit's marker, where the merge report reads them at no
        cost (the judge's verdicts and tokens, issue 14). Default: none."""
        return {}

    def provenance(self) -> dict:
        """What goes into each kept record's ``prov[stage]`` (model path, sampling, config hash)."""
        return {}

    @classmethod
    def before_run(cls, cfg: DictConfig, executor: Any, log_dir: Path) -> None:
        """Once per ``kun-hpc run``, after sharding and before the grid is submitted (default: nothing)."""

    @classmethod
    def hash_inputs(cls, cfg: DictConfig) -> dict:
        """What outside the stage's own section decides its output (goes into its config hash)."""
        return {}


@dataclass(frozen=True)
class ShardTask:
    """One input shard of a unit and where its outputs go."""

    input: str
    output: str
    rejected: str
    quarantine: str


@dataclass(frozen=True)
class Unit:
    """A unit of work: one stage over a group of shards (picklable; executors ship it to workers)."""

    stage: str
    index: int
    shards: tuple[ShardTask, ...]
    run_dir: str
    config_hash: str
    ref: str = ""  # how pipeline.stages names the stage ("filter" or "package.module:Class")

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.index:05d}"

    @property
    def unit(self) -> str:
        return self.name


def add_stats(a: dict, b: dict) -> dict:
    """``a + b`` key by key, recursively: numbers add, nested dicts merge, a key in one only is kept (as
    datatrove's stats merge with ``+``). Neither argument is changed."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict):
            out[k] = add_stats(out[k], v)
        else:
            out[k] = out[k] + v
    return out


def marker_path(run_dir: str | Path, stage: str, unit_name: str) -> Path:
    return Path(run_dir) / "done" / stage / f"{unit_name}.json"


def read_marker(run_dir: str | Path, stage: str, unit_name: str) -> dict | None:
    path = marker_path(run_dir, stage, unit_name)
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None


# ----------------------------------------------------------------------------------------- chunks
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
    folder: Path, index: int, kept: list[bytes], rejected: list[bytes], bad: list[bytes], counts: dict
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, lines in (("out", kept), ("rejected", rejected), ("quarantine", bad)):
        _write_zst(folder / f"chunk-{index:05d}.{kind}.zst", lines)
    atomic_write_bytes(folder / f"chunk-{index:05d}.json", orjson.dumps(counts))  # the commit point


def _concat(parts: list[Path], dest: str) -> tuple[int, str]:
    """Concatenate zstd files (frames) into dest atomically; return (bytes, sha256)."""
    with atomic_open(dest) as raw:
        out = HashingWriter(raw)
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
    return out.nbytes, out.sha256.hexdigest()


def _input_items(path: str) -> Iterator[tuple[str, bytes] | Bad]:
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
    """Run one input shard through the stage, resuming after the last committed chunk."""
    folder = _chunk_dir(task.output)
    done = committed_chunks(task.output)
    resumed_at = len(done)  # > 0 when an interrupted attempt had committed chunks
    skip = sum(c["in"] for c in done)
    items = _input_items(task.input)
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
        batch, bad, bad_counts, n_in = chunk.batch, chunk.bad, chunk.bad_counts, chunk.n_in
        if len(results) != len(batch):
            raise RuntimeError(
                f"stage {stage.name}: process() returned {len(results)} results for {len(batch)}"
            )
        kept, rejected, flat = [], [], []
        reasons: Counter[str] = Counter()  # records rejected whole
        unit_reasons: Counter[str] = Counter()
        records_out = units_made = 0
        for res in results:
            outs = res if isinstance(res, list) else [res]
            if not outs:
                raise RuntimeError(f"stage {stage.name}: process() returned no output for a record")
            why: set[str] = set()
            flat += outs
            for o in outs:
                units_made += 1
                if type(o) is Rejected:
                    unit_reasons[o.reason] += 1
                    why.add(o.reason)
                    reject = {"stage": stage.name, "reason": o.reason, "detail": o.detail}
                    row = {**o.record, "reject": reject}
                    rejected.append(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
                else:
                    if stage_prov:
                        o.setdefault("prov", {})[stage.name] = stage_prov
                    kept.append(orjson.dumps(o, option=orjson.OPT_APPEND_NEWLINE))
            if any(type(o) is not Rejected for o in outs):
                records_out += 1
            else:
                reasons["+".join(sorted(why))] += 1
        counts = {
            "in": n_in,
            "out": records_out,
            "rejected": dict(reasons),
            "quarantined": dict(bad_counts),
            "units": {"made": units_made, "out": len(kept), "rejected": dict(unit_reasons)},
        }
        stats = stage.chunk_stats(flat)
        if stats:
            counts["stats"] = stats
        _commit_chunk(folder, index, kept, rejected, bad, counts)
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
    total: dict[str, Any] = {"in": 0, "out": 0, "rejected": Counter(), "quarantined": Counter()}
    units = {"made": 0, "out": 0, "rejected": Counter()}
    stats: dict = {}
    for c in chunks:
        stats = add_stats(stats, c.get("stats", {}))
        total["in"] += c["in"]
        total["out"] += c["out"]
        total["rejected"].update(c["rejected"])
        total["quarantined"].update(c["quarantined"])
        u = chunk_units(c)
        units["made"] += u["made"]
        units["out"] += u["out"]
        units["rejected"].update(u["rejected"])
    check_accounting(f"{task.output}", {**total, "units": units})
    return {
        "input": task.input,
        "output": task.output,
        "bytes": nbytes,
        "sha256": sha,
        "chunks": len(chunks),
        "resumed_at_chunk": resumed_at,
        **{k: dict(v) if isinstance(v, Counter) else v for k, v in total.items()},
        "units": {**units, "rejected": dict(units["rejected"])},
        "stats": stats,
    }


def chunk_units(counts: dict) -> dict:
    """The unit counts of a chunk or marker (derived from the record counts when absent: written before
    fan-out existed, one unit per record)."""
    if "units" in counts:
        return counts["units"]
    made = counts["out"] + sum(counts["rejected"].values())
    return {"made": made, "out": counts["out"], "rejected": dict(counts["rejected"])}


def check_accounting(what: str, counts: dict) -> None:
    """Both invariants (see the module docstring); RuntimeError naming ``what`` when one is broken."""
    rejected, quarantined = sum(counts["rejected"].values()), sum(counts["quarantined"].values())
    if counts["in"] != counts["out"] + rejected + quarantined:
        raise RuntimeError(f"{what}: record accounting broken: {counts}")
    u = chunk_units(counts)
    if u["made"] != u["out"] + sum(u["rejected"].values()) or u["made"] < counts["out"] + rejected:
        raise RuntimeError(f"{what}: unit accounting broken: {counts}")


def run_unit(unit: Unit, stage: Stage | None = None) -> dict:
    """Run every shard of a unit through its stage and commit the unit's completion marker."""
    from kun_hpc.pipeline import load_run_config, make_stage

    marker = read_marker(unit.run_dir, unit.stage, unit.name)
    if marker is not None and marker.get("config_hash") == unit.config_hash:
        return marker
    cfg = load_run_config(unit.run_dir)
    stage = stage or make_stage(unit.ref or unit.stage, cfg)
    started = time.time()
    stage.setup()
    try:
        prov = {**stage.provenance(), "config_hash": unit.config_hash}
        shards = [run_shard_task(stage, t, cfg.pipeline.chunk_records, prov) for t in unit.shards]
    finally:
        stage.close()
    marker = {
        "unit": unit.name,
        "stage": unit.stage,
        "config_hash": unit.config_hash,
        "in": sum(s["in"] for s in shards),
        "out": sum(s["out"] for s in shards),
        "rejected": dict(sum((Counter(s["rejected"]) for s in shards), Counter())),
        "quarantined": dict(sum((Counter(s["quarantined"]) for s in shards), Counter())),
        "units": {
            "made": sum(s["units"]["made"] for s in shards),
            "out": sum(s["units"]["out"] for s in shards),
            "rejected": dict(sum((Counter(s["units"]["rejected"]) for s in shards), Counter())),
        },
        "stats": functools.reduce(add_stats, (s["stats"] for s in shards), {}),
        "shards": shards,
        "timings": {"start": started, "end": time.time(), "seconds": round(time.time() - started, 3)},
        "host": socket.gethostname(),
        "job": os.environ.get("SLURM_JOB_ID", ""),
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
        "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    }
    atomic_write_bytes(
        marker_path(unit.run_dir, unit.stage, unit.name), orjson.dumps(marker, option=orjson.OPT_INDENT_2)
    )
    return marker
