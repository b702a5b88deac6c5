"""Phase 2, buckets: partition t of every shard's entries; records sharing a key are candidate pairs,
each verified (:mod:`kun_hpc.merge.dedup.verify`); the verified ones go to ``pairs/part-t.npy``.
"""

from __future__ import annotations

import array
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kun_hpc.merge.dedup.job import DedupJob
from kun_hpc.merge.dedup.storage import ENTRY, PAIR, save_array
from kun_hpc.merge.dedup.verify import Keys, similarity

SLICE_ENTRIES = 1 << 17  # bucket entries a bucket task sorts at once (about 5 MB) ...
SLICE_PER_SHARD = 512  # ... or this many per shard file, when there are more than 256 files
ALL_PAIRS_UP_TO = 8  # a bucket of at most this many records checks every pair; a bigger one a star + a chain


def _candidates(key: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """Candidate pairs (a < b) of sorted (key, gid) entries: every pair of a small bucket; a star from the
    first member and a chain through consecutive members of a big one."""
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    out = []
    for m in range(2, ALL_PAIRS_UP_TO + 1):
        first = starts[sizes == m]
        if len(first):
            i, j = np.triu_indices(m, 1)
            out.append(np.stack([gid[first[:, None] + i].ravel(), gid[first[:, None] + j].ravel()], axis=1))
    big = sizes > ALL_PAIRS_UP_TO
    if big.any():
        member = np.repeat(np.arange(len(starts))[big], sizes[big])
        pos = np.concatenate([np.arange(s, s + n) for s, n in zip(starts[big], sizes[big], strict=True)])
        later = pos != starts[member]
        out.append(np.stack([gid[starts[member][later]], gid[pos[later]]], axis=1))  # star
        out.append(np.stack([gid[pos[later] - 1], gid[pos[later]]], axis=1))  # chain
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.uint64)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _shared_keys(job: DedupJob, t: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The entries of partition ``t`` whose key another entry shares, as (keys, global ids) sorted by (key,
    id), in slices of the key space of about ``SLICE_ENTRIES`` entries each, or ``SLICE_PER_SHARD`` a shard
    when there are many shards (so a task's memory does not grow with the records, and each read of a
    shard's file fetches hundreds of entries, not one). Each shard's file is sorted by key, one key's
    entries in row order; a slice is read from every file in shard order and sorted stably by key: that is
    a sort by (key, id)."""
    paths = [job.sig_dir(s) / f"part-{t:04d}.bin" for s in range(len(job.inputs))]
    sizes = [p.stat().st_size // ENTRY.itemsize for p in paths]
    per_slice = max(SLICE_ENTRIES, SLICE_PER_SHARD * sum(1 for n in sizes if n))  # reads of >= 512 entries
    slices = max(1, -(-sum(sizes) // per_slice))
    bounds = [(k << 64) // slices for k in range(slices + 1)]
    for lo, hi in itertools.pairwise(bounds):
        parts = []
        for path, size in zip(paths, sizes, strict=True):
            keys = np.memmap(path, dtype=ENTRY, mode="r")["key"] if size else np.zeros(0, np.uint64)
            a, b = (int(np.searchsorted(keys, np.uint64(x))) if x < 2**64 else size for x in (lo, hi))
            del keys
            parts.append(np.fromfile(path, dtype=ENTRY, count=b - a, offset=a * ENTRY.itemsize))
        ends = np.cumsum([len(x) for x in parts])
        table = np.concatenate(parts)
        del parts
        order = np.argsort(table["key"], kind="stable")
        key = table["key"][order]
        same = key[1:] == key[:-1]
        if not same.any():
            continue
        shared = np.r_[same, False] | np.r_[False, same]
        at = order[shared]
        shard = np.searchsorted(ends, at, side="right").astype(np.uint64)
        yield key[shared], (shard << np.uint64(32)) | table["row"][at].astype(np.uint64)


def bucket_unit(args: tuple[DedupJob, int]) -> dict:
    """Partition t of every shard's keys: records with an equal key are candidate pairs; the verified ones
    (with their similarity) go to ``pairs/part-t.npy``."""
    job, t = args
    store, verdicts = Keys(job), Counter()
    verified = {"a": array.array("Q"), "b": array.array("Q"), "sim": array.array("f")}  # 20 bytes a pair
    checked = 0
    try:
        for key, gid in _shared_keys(job, t):
            candidates = _candidates(key, gid)
            checked += len(candidates)
            for a, b in candidates.tolist():
                sim, verdict = similarity(store.key(a, keep=True), store.key(b), job.settings)
                verdicts[verdict] += 1
                if verdict in ("exact", "near"):
                    for name, value in (("a", a), ("b", b), ("sim", sim)):
                        verified[name].append(value)
    finally:
        store.close()
    pairs = np.zeros(len(verified["a"]), dtype=PAIR)
    for name, column in verified.items():
        pairs[name] = np.frombuffer(column, dtype=pairs.dtype[name]) if len(column) else 0
    save_array(Path(job.work) / "pairs" / f"part-{t:04d}.npy", pairs)
    entries = sum(
        (job.sig_dir(s) / f"part-{t:04d}.bin").stat().st_size // ENTRY.itemsize
        for s in range(len(job.inputs))
    )
    return {
        "entries": entries,
        "candidates": checked,
        "verified": len(pairs),
        "rejected": {k: verdicts[k] for k in ("below_threshold", "tokens_differ")},
    }
