"""A few sample records per step and per reject reason, read from the first lines of the shards that hold
them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from kun_hpc.cluster.funnel import corpus_of
from kun_hpc.inspect_run import clip
from kun_hpc.io.shards import iter_shard_lines
from kun_hpc.report.funnel import Step
from kun_hpc.report.paths import strip_local_paths

SAMPLE_CHARS = 120  # a sample record's instruction, answer, text and reject detail are cut to this
SAMPLE_FIELDS = ("instruction", "answer", "text")


def _first_records(path: str | Path, n: int) -> Iterator[dict]:
    """The first ``n`` records of a shard (ValueError naming the file and line for one that is no JSON)."""
    if n <= 0:
        return
    for i, line in enumerate(iter_shard_lines(path), 1):
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i}: not a JSON record ({e})") from None
        if i >= n:
            return


def sample_row(record: dict) -> dict:
    """What the report shows of a record: id, corpus, the instruction / answer / text and the reject
    detail, each cut to :data:`SAMPLE_CHARS` characters (saying how many were cut)."""
    row = {"id": str(record.get("id", "")), "corpus": str(record.get("corpus", ""))}
    for f in SAMPLE_FIELDS:
        if isinstance(record.get(f), str):
            row[f] = clip(record[f], SAMPLE_CHARS)
    reject = record.get("reject")
    if isinstance(reject, dict):
        row["detail"] = clip(strip_local_paths(str(reject.get("detail") or "")), SAMPLE_CHARS)
    return row


def step_samples(step: Step, n: int) -> dict:
    """Up to ``n`` kept records (pipeline stages: the first records of the first non-empty output shard of
    each corpus) and up to ``n`` rejected records per reason of ``step``, as :func:`sample_row` dicts:
    ``{"kept": [...], "rejected": {reason: [...]}}``.

    Cheap at any scale: a shard is opened only when its marker entry counts what is still missing (kept
    records, or rejected lines of a reason not yet sampled), and read only until that is found.
    """
    kept: list[dict] = []
    if step.samples_kept and n > 0:
        firsts: dict[str, str] = {}
        for m in step.markers:
            for s in m.get("shards", []):
                if s["out"]:
                    firsts.setdefault(corpus_of(s["output"]), s["output"])
        per = -(-n // max(len(firsts), 1))
        kept = [sample_row(r) for path in firsts.values() for r in _first_records(path, per)][:n]
    rejected: dict[str, list[dict]] = {}

    def missing(reasons: dict) -> bool:
        return any(c and len(rejected.get(r, [])) < n for r, c in reasons.items())

    for m in step.markers:
        for s in m.get("shards", []):
            reasons = s.get("units", s)["rejected"]  # a stage's rejected file holds units (docs/filter.md)
            if not missing(reasons):
                continue
            path = step.root / "rejected" / Path(s["output"]).relative_to(step.root)
            for i, line in enumerate(iter_shard_lines(path), 1):
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {i}: not a JSON record ({e})") from None
                got = rejected.setdefault(str(rec.get("reject", {}).get("reason", "?")), [])
                if len(got) < n:
                    got.append(sample_row(rec))
                if not missing(reasons):
                    break
    return {"kept": kept, "rejected": dict(sorted(rejected.items()))}
