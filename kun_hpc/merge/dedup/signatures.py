"""Phase 1, signatures: each record's dedup key, its xxh3-128 (exact) and MinHash LSH band keys (near),
written per shard to ``partitions`` entry files and columns (see the package docstring).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from typing import Any

import numpy as np
import orjson
import xxhash
import zstandard

from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.quarantine import Bad
from kun_hpc.merge.dedup.job import DedupJob, key_text, shard_records
from kun_hpc.merge.dedup.storage import ENTRY, Columns, Partitions, Strings
from kun_hpc.merge.minhash import MinHasher, mix64
from kun_hpc.merge.normalize import make_normalizer, shingle_text

EXACT_TAG = np.uint64(0xE7AC7)  # mixed into exact keys so they never equal a band key
RECENT_KEYS = 1 << 16  # slots of a signature task's table of recent exact hashes (512 KB)


def _dedups(st: dict) -> bool:
    return bool(st["exact"] or st["near"])


def signature_unit(args: tuple[DedupJob, list[int]]) -> dict:
    job, shards = args
    totals: Counter[str] = Counter()
    for s in shards:
        _shard_signatures(job, s, totals)
    return {"counts": dict(totals)}


def band_entries(
    rows: list[int],
    keys: list[str],
    hasher: MinHasher,
    st: dict,
    signatures: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The band entries (:data:`~kun_hpc.merge.dedup.storage.ENTRY`: band key, row) of a batch of
    non-empty normalized keys: the short banding, the long one, or both, by distinct shingles (the dedup
    and the split of an export, kun_hpc/merge/split.py, bucket alike). ``signatures``: the keys'
    :meth:`~kun_hpc.merge.minhash.MinHasher.signatures` when the caller has them already."""
    sig, distinct = signatures or hasher.signatures([shingle_text(k) for k in keys])
    r = np.array(rows, dtype=np.uint32)
    out = []
    short = distinct < st["long_shingles"]
    long = distinct >= st["threshold"] * st["long_shingles"]
    for tag, (bands, which) in enumerate(((st["bands"], short), (st["long_bands"], long))):
        if which.any():
            k = hasher.band_keys(sig[which], bands, tag)
            e = np.zeros(k.shape, dtype=ENTRY)
            e["key"], e["row"] = k, r[which][:, None]
            out.append(e.ravel())
    return np.concatenate(out) if out else np.zeros(0, ENTRY)


def _shard_signatures(job: DedupJob, s: int, totals: Counter) -> None:
    """One shard: its entries to ``partitions`` files and its records' keys, ids and survivor-rule fields
    to columns, all written as they are made (memory: one batch, whatever the shard's size)."""
    st = job.settings
    normalize = make_normalizer(st["normalize"])
    hasher = MinHasher(st["ngram"], st["permutations"], st["seed"])
    folder = job.sig_dir(s)
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"dups": {}, "no_content": []}
    batch_rows: list[int] = []
    batch_keys: list[str] = []
    exact_rows: list[int] = []
    exact_low: list[int] = []
    recent = np.zeros(RECENT_KEYS, dtype=np.uint64)  # exact hashes seen lately, by hash % RECENT_KEYS

    def flush() -> None:
        if exact_rows:
            e = np.zeros(len(exact_rows), ENTRY)
            e["key"], e["row"] = mix64(np.array(exact_low, dtype=np.uint64) ^ EXACT_TAG), exact_rows
            parts.write(e)
        if batch_rows:
            parts.write(band_entries(batch_rows, batch_keys, hasher, st))
        cols.flush()
        for batch in (exact_rows, exact_low, batch_rows, batch_keys):
            batch.clear()

    with contextlib.ExitStack() as stack:
        parts = Partitions(folder, st["partitions"], stack)
        cols = Columns(folder, stack)
        add_key, add_id, add_corpus = (Strings(folder, c).writer(stack) for c in ("keys", "ids", "corpora"))
        for i, rec, _ in shard_records(job.inputs[s]):
            totals["in"] += 1
            if type(rec) is Bad:
                totals["quarantined"] += 1
                continue
            raw = key_text(rec, job.key)
            key = normalize(raw) if raw is not None else ""
            if not key:
                if _dedups(st):
                    meta["no_content"].append([i, raw is None])
                    totals["no_content"] += 1
                continue
            encoded = key.encode()
            digest = xxhash.xxh3_128_intdigest(encoded)
            low = digest & (2**64 - 1)
            score = rec.get("score")
            score = float(score) if isinstance(score, (int, float)) else math.nan
            row = cols.add(line=i, length=len(raw), score=score, h1=digest >> 64, h2=low)
            add_key(encoded)
            add_id(str(rec.get("id", "")).encode())
            add_corpus(str(rec.get("corpus", "")).encode())
            if rec.get("dup_count"):
                meta["dups"][row] = [int(rec["dup_count"]), list(rec.get("dup_corpora") or [])]
            if st["exact"]:
                exact_rows.append(row)
                exact_low.append(low)
                slot = low % RECENT_KEYS
                if recent[slot] == low:  # a repeat within the shard: its exact key joins it to the first
                    continue
                recent[slot] = low
            if st["near"]:
                batch_rows.append(row)
                batch_keys.append(key)
            if len(exact_rows) >= st["batch_docs"] or len(batch_rows) >= st["batch_docs"]:
                flush()
        flush()
    totals["hashed"] += cols.rows
    atomic_write_bytes(
        folder / "meta.json.zst", zstandard.compress(orjson.dumps(meta, option=orjson.OPT_NON_STR_KEYS))
    )
