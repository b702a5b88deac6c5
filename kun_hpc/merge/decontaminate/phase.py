"""The ``merge-decontaminate`` phase: its units (a group of shards each) and what a unit does with a shard's
records -- clean ones kept, contaminated ones rejected with the benchmark n-gram they share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.cluster.phases import Phase, PhaseUnit
from kun_hpc.config import config_hash
from kun_hpc.core.counts import Counts, add_stats
from kun_hpc.io.quarantine import Bad
from kun_hpc.io.shards import FilteredShard
from kun_hpc.merge.decontaminate.index import Hit, NgramIndex, build_index
from kun_hpc.merge.dedup.job import shard_records

PHASE = "merge-decontaminate"
REASON = "contaminated"
BATCH_CHARS = 1 << 20  # record characters hashed at once (the shingle arrays take ~50 bytes per character)


@dataclass(frozen=True)
class DecontaminateTask:
    """One unit of the phase: a group of shards (picklable)."""

    kind: str  # pairs | text
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    rejected: tuple[str, ...]
    quarantine: tuple[str, ...]
    index: str  # folder of index.npy / index.json
    fingerprint: str
    zstd_level: int


def record_fields(kind: str) -> tuple[str, ...]:
    """The fields of a record checked for benchmark n-grams, in the order they are checked."""
    return ("instruction", "answer") if kind == "pairs" else ("text",)


def decontaminate_phase(
    cfg: DictConfig, kind: str, shards: list[Path], root: Path, upstream: str
) -> tuple[Phase, list[Path], Path, str]:
    """The ``merge-decontaminate`` phase over ``shards`` (under ``root``; the benchmark index is built
    first), the shards it writes, their root, and the hash of what made them (for the passes after it).

    Raises :class:`BenchmarkError` for benchmark files that cannot be used."""
    folder, fingerprint = build_index(cfg)
    out = Path(cfg.merge.output) / "decontaminate"
    rel = [p.relative_to(root) for p in shards]
    outputs = [out / r for r in rel]
    spt = cfg.dedup.shards_per_task
    level = int(cfg.merge.zstd_level)
    h = config_hash(
        {
            "index": fingerprint,
            "upstream": upstream,
            "kind": kind,
            "inputs": [os.path.relpath(s, cfg.run.dir) for s in shards],  # the run folder may move
        }
    )

    def task(i: int) -> DecontaminateTask:
        part = rel[i : i + spt]
        return DecontaminateTask(
            kind=kind,
            inputs=tuple(str(s) for s in shards[i : i + spt]),
            outputs=tuple(str(out / r) for r in part),
            rejected=tuple(str(out / "rejected" / r) for r in part),
            quarantine=tuple(str(out / "quarantine" / r) for r in part),
            index=str(folder),
            fingerprint=fingerprint,
            zstd_level=level,
        )

    fn = "kun_hpc.merge.decontaminate.phase:decontaminate_unit"
    run_dir = str(cfg.run.dir)
    units = [PhaseUnit(PHASE, g, fn, task(i), run_dir, h) for g, i in enumerate(range(0, len(shards), spt))]
    return (
        Phase(PHASE, units),
        outputs,
        out,
        config_hash({"decontaminate": fingerprint, "upstream": upstream}),
    )


def decontaminate_unit(task: DecontaminateTask) -> dict:
    """Each shard of the group: clean records to its output, contaminated ones to its rejected file (with
    ``reject``: stage, reason, detail, benchmark, line, benchmark_field, field, ngram), unreadable lines to
    quarantine. Marker: in, out, rejected, quarantined, per benchmark file (``benchmarks``) and per shard."""
    index = NgramIndex.load(task.index, task.fingerprint)
    fields = record_fields(task.kind)
    reports, total = [], Counts()
    for s, path in enumerate(task.inputs):
        counts = Counts()
        per_bench: dict[str, dict] = {}
        with FilteredShard(task.outputs[s], task.rejected[s], task.quarantine[s], task.zstd_level) as files:
            out, rej, bad = files.kept, files.rejected, files.quarantine
            for batch in _batches(path, fields):
                texts = [_text(r, f) for r, _ in batch for f in fields]
                hits = index.first_hits(texts)
                for k, (rec, line) in enumerate(batch):
                    counts.in_ += 1
                    if type(rec) is Bad:
                        counts.quarantined[rec.reason] += 1
                        bad.write(rec.to_dict())
                        continue
                    mine = hits[k * len(fields) : (k + 1) * len(fields)]
                    j = next((j for j, hit in enumerate(mine) if hit is not None), None)
                    if j is None:
                        counts.out += 1
                        out.write_line(line if line.endswith(b"\n") else line + b"\n")
                        continue
                    hit = mine[j]
                    counts.rejected[REASON] += 1
                    rej.write({**rec, "reject": _reject(hit, fields[j], index.n)})
                    b = per_bench.setdefault(
                        hit.benchmark, {"rejected": 0, "fields": {}, "benchmark_fields": {}}
                    )
                    b["rejected"] += 1
                    b["fields"][fields[j]] = b["fields"].get(fields[j], 0) + 1
                    b["benchmark_fields"][hit.benchmark_field] = (
                        b["benchmark_fields"].get(hit.benchmark_field, 0) + 1
                    )
            info = files.close()
        counts.check(task.outputs[s])
        reports.append(
            {
                "input": path,
                "output": task.outputs[s],
                "sha256": info.sha256,
                "bytes": info.bytes,
                **counts.to_dict(),
                "benchmarks": per_bench,
            }
        )
        total += counts
    benchmarks: dict = {}
    for r in reports:
        benchmarks = add_stats(benchmarks, r["benchmarks"])
    return {
        "stage": PHASE,
        **total.to_dict(),
        "benchmarks": benchmarks,
        "index": task.fingerprint,
        "shards": reports,
    }


def _batches(path: str, fields: tuple[str, ...]) -> Iterator[list[tuple[dict | Bad, bytes]]]:
    """(record or Bad, raw line) of a shard in batches of about :data:`BATCH_CHARS` checked characters."""
    batch: list[tuple[dict | Bad, bytes]] = []
    chars = 0
    for _, rec, line in shard_records(path):
        batch.append((rec, line))
        if type(rec) is not Bad:
            chars += sum(len(_text(rec, f)) for f in fields)
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _text(rec: dict | Bad, name: str) -> str:
    value = rec.get(name) if type(rec) is dict else None
    return value if isinstance(value, str) else ""


def _reject(hit: Hit, where: str, n: int) -> dict:
    detail = (
        f"its {where} shares the {n}-gram {hit.ngram!r} with the {hit.benchmark_field} at "
        f"{hit.benchmark} line {hit.line}"
    )
    return {
        "stage": PHASE,
        "reason": REASON,
        "detail": detail,
        "benchmark": hit.benchmark,
        "line": hit.line,
        "benchmark_field": hit.benchmark_field,
        "field": where,
        "ngram": hit.ngram,
    }
