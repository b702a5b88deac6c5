"""Exact and near-duplicate removal across every shard of every corpus, as four global phases (issue 13).

::

    signatures (array, per shard group)  the dedup key of each record (kun_hpc/merge/normalize.py), its
                                          xxh3-128 (exact) and MinHash LSH band keys (near), per shard in
                                          ``partitions`` files by key % partitions; the keys themselves
    buckets    (array, per partition)    partition t of every shard: equal keys -> candidate pairs, each
                                          checked against the true n-gram Jaccard of the two keys
    clusters   (one task)                components of the verified pairs; survivors; removal lists
    apply      (array, per shard group)  kept records -> output shard (with ``dup_count``/``dup_corpora``),
                                          removed -> rejected (reason, survivor, similarity)

**Candidates.** A record's shingles are the character ``ngram``-grams of its key without separators. Its
``permutations`` MinHash values are cut into ``bands`` bands when it has fewer than ``long_shingles``
distinct shingles (short texts: a poem, an instruction), into ``long_bands`` bands when it has more, and
into both when it is within reach of the boundary (at least ``threshold * long_shingles``: two texts of
Jaccard ``>= threshold`` have shingle counts within that ratio, so every such pair shares a banding). Exact
duplicates share their xxh3-128 key; a record whose key occurred shortly before in its shard (a table of
``RECENT_KEYS`` recent keys) adds no band keys: its exact key joins it to the first one, whose similar
records are its own. LSH is generous on purpose: every candidate is verified.

**Verification.** A candidate pair is a near duplicate only when the exact Jaccard similarity of the two
shingle sets is at least ``threshold``, and the numbers, words and symbols of the two keys
(:func:`~kun_hpc.merge.normalize.tokens`) are the same -- for two long texts, alike to a ``difflib`` ratio
of at least ``token_threshold`` -- so ``3+5`` and ``3-5`` differ however alike the rest is. Equal keys
are exact duplicates. The buckets markers count the checks (a pair sharing keys in several partitions is
checked in each) and the two kinds of rejection; the clusters marker the distinct verified pairs.

**Survivors.** Records with equal keys form classes; classes are taken in ``dedup.keep`` order of their
best record (highest ``score``, else longest, else smallest id, then input order). A class is kept when no
verified pair links it to a class kept before; otherwise all its records are removed as ``near_duplicate``
of the most similar kept class's best record. A class without such a pair is checked against the first
``INDIRECT_CHECKS`` kept classes of its cluster (a big bucket pairs its records only as a star and a chain).
The other records of a kept class are ``duplicate_exact`` of its best. So every removed record is itself
similar to its survivor (no chains: a ~ b ~ c does not remove c for a when c is not similar to a). Nothing
depends on how the work was cut into tasks (tested).

Records whose key is empty (an instruction that is only punctuation, ``。``) or missing are rejected as
``no_content``. Memory per task: a signature task holds one batch, then one partition of one shard; a
bucket task one slice of the key space and its verified pairs; the cluster task the verified pairs and the
records in them; an apply task one shard's lists (docs/merge.md has the figures).
"""

from __future__ import annotations

import array
import contextlib
import difflib
import io
import itertools
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import xxhash
import zstandard

from kun_hpc.cluster.phases import Phase, PhaseUnit
from kun_hpc.config import config_hash
from kun_hpc.core.counts import Counts
from kun_hpc.io.atomic import atomic_open, atomic_write_bytes
from kun_hpc.io.markers import read_marker
from kun_hpc.io.quarantine import Bad
from kun_hpc.io.shards import FilteredShard
from kun_hpc.merge.minhash import MinHasher, mix64
from kun_hpc.merge.normalize import make_normalizer, shingle_text, tokens
from kun_hpc.stages.chunks import input_items

ENTRY = np.dtype([("key", "<u8"), ("row", "<u4")])  # a bucket entry: 12 bytes
PAIR = np.dtype([("a", "<u8"), ("b", "<u8"), ("sim", "<f4")])  # a verified pair of global ids
EXACT_TAG = np.uint64(0xE7AC7)  # mixed into exact keys so they never equal a band key
RECENT_KEYS = 1 << 16  # slots of a signature task's table of recent exact hashes (512 KB)
INDIRECT_CHECKS = 64  # kept classes of its cluster a class without a verified pair to one is checked against
OPEN_SHARDS = 64  # shards whose key files a task keeps open at once
SLICE_ENTRIES = 1 << 17  # bucket entries a bucket task sorts at once (about 5 MB) ...
SLICE_PER_SHARD = 512  # ... or this many per shard file, when there are more than 256 files
ALL_PAIRS_UP_TO = 8  # a bucket of at most this many records checks every pair; a bigger one a star + a chain
REASONS = {"exact": "duplicate_exact", "near": "near_duplicate", "empty": "no_content"}


@dataclass(frozen=True)
class DedupJob:
    """One dedup over a set of shards (picklable; every unit of its phases gets it)."""

    name: str  # phase prefix and reject stage name: "dedup-raw", "merge-dedup-instruction", ...
    key: str  # text | instruction | pair
    inputs: tuple[str, ...]  # input shards, in a fixed order (the order breaks the last survivor ties)
    outputs: tuple[str, ...]  # kept records of each input
    rejected: tuple[str, ...]
    quarantine: tuple[str, ...]
    work: str  # signatures, pairs, removal lists
    settings: dict  # the dedup section as plain values
    run_dir: str

    def sig_dir(self, s: int) -> Path:
        return Path(self.work) / "signatures" / f"{s:05d}"


def key_text(record: dict, key: str) -> str | None:
    """What a record is compared by; None when it has no such field (it is then ``no_content``)."""
    if key == "pair":
        ins, out = record.get("instruction"), record.get("answer", record.get("output"))
        return None if not isinstance(ins, str) or not isinstance(out, str) else f"{ins}\n\x00\n{out}"
    value = record.get(key)
    return value if isinstance(value, str) else None


def _records(path: str) -> Iterator[tuple[int, dict | Bad, bytes]]:
    """(line index, record or Bad, raw line) of a shard; indexes match across phases."""
    for i, item in enumerate(input_items(path)):
        if type(item) is Bad:
            yield i, item, b""
            continue
        where, line = item
        try:
            yield i, orjson.loads(line), line
        except orjson.JSONDecodeError as e:
            yield i, Bad(Path(path).name, where, "invalid_json", str(e), line), line


def _dedups(st: dict) -> bool:
    return bool(st["exact"] or st["near"])


# ------------------------------------------------------------------------------------------- signatures
def signature_unit(args: tuple[DedupJob, list[int]]) -> dict:
    job, shards = args
    totals: Counter[str] = Counter()
    for s in shards:
        _shard_signatures(job, s, totals)
    return {"counts": dict(totals)}


def _band_entries(rows: list[int], keys: list[str], hasher: MinHasher, st: dict) -> np.ndarray:
    """The band entries of a batch: the short banding, the long one, or both, by distinct shingles."""
    sig, distinct = hasher.signatures([shingle_text(k) for k in keys])
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


class _Partitions:
    """``partitions`` entry files of one shard, appended batch by batch; on close each is sorted by key
    (stably: one key's entries stay in row order) and renamed into place. Memory: a batch, then one
    partition of one shard."""

    def __init__(self, folder: Path, parts: int, stack: contextlib.ExitStack):
        self.parts, self.folder = parts, folder
        self.paths = [folder / f".part-{t:04d}.unsorted" for t in range(parts)]
        self.files = [stack.enter_context(open(p, "wb")) for p in self.paths]  # noqa: SIM115
        stack.push(self._close)

    def write(self, entries: np.ndarray) -> None:
        which = entries["key"] % np.uint64(self.parts)
        for t, f in enumerate(self.files):
            f.write(entries[which == t].tobytes())

    def _close(self, failed: type | None, *_: Any) -> None:
        for f in self.files:
            f.close()
        for t, path in enumerate(self.paths):
            if failed is not None:
                path.unlink(missing_ok=True)
                continue
            e = np.fromfile(path, dtype=ENTRY)
            atomic_write_bytes(
                self.folder / f"part-{t:04d}.bin", e[np.argsort(e["key"], kind="stable")].tobytes()
            )
            path.unlink()


class _Columns:
    """Fixed-width columns of one shard's records (``docs.<name>.bin``, raw little-endian), appended as
    they are made and flushed with each batch; read back with :func:`_column`."""

    TYPES: ClassVar[dict[str, str]] = {"line": "q", "length": "q", "score": "d", "h1": "Q", "h2": "Q"}

    def __init__(self, folder: Path, stack: contextlib.ExitStack):
        self.rows = 0
        self.buffers = {name: array.array(code) for name, code in self.TYPES.items()}
        self.files = {
            name: stack.enter_context(atomic_open(folder / f"docs.{name}.bin")) for name in self.TYPES
        }

    def add(self, **values: float) -> int:
        for name, value in values.items():
            self.buffers[name].append(value)
        self.rows += 1
        return self.rows - 1

    def flush(self) -> None:
        for name, buf in self.buffers.items():
            self.files[name].write(buf.tobytes())
            del buf[:]


def _column(folder: Path, name: str) -> np.ndarray:
    """A column written by :class:`_Columns`, memory-mapped (reading rows touches only their pages)."""
    path = folder / f"docs.{name}.bin"
    dtype = np.dtype(_Columns.TYPES[name])
    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)


class _Strings:
    """A column of strings on disk: ``<name>.bin`` (UTF-8, back to back) and ``<name>.ends`` (int64 end
    offsets); written row by row, read by row with ``os.pread`` (a reader holds no table in memory)."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = folder, name
        self.fds: tuple[int, int] | None = None

    def writer(self, stack: contextlib.ExitStack) -> Callable[[bytes], None]:
        data = stack.enter_context(atomic_open(self.folder / f"{self.name}.bin"))
        ends = stack.enter_context(atomic_open(self.folder / f"{self.name}.ends"))
        at = [0]

        def add(text: bytes) -> None:  # UTF-8
            at[0] += data.write(text)
            ends.write(at[0].to_bytes(8, "little"))

        return add

    def __getitem__(self, row: int) -> str:
        if self.fds is None:
            self.fds = tuple(os.open(self.folder / f"{self.name}.{x}", os.O_RDONLY) for x in ("bin", "ends"))
        data, ends = self.fds
        raw = os.pread(ends, 16, 8 * (row - 1)) if row else b"\0" * 8 + os.pread(ends, 8, 0)
        start, end = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        return os.pread(data, end - start, start).decode()

    def close(self) -> None:
        for fd in self.fds or ():
            os.close(fd)
        self.fds = None


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
            parts.write(_band_entries(batch_rows, batch_keys, hasher, st))
        cols.flush()
        for batch in (exact_rows, exact_low, batch_rows, batch_keys):
            batch.clear()

    with contextlib.ExitStack() as stack:
        parts = _Partitions(folder, st["partitions"], stack)
        cols = _Columns(folder, stack)
        add_key, add_id, add_corpus = (_Strings(folder, c).writer(stack) for c in ("keys", "ids", "corpora"))
        for i, rec, _ in _records(job.inputs[s]):
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


def _save(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _load_meta(folder: Path) -> dict:
    return orjson.loads(zstandard.decompress((folder / "meta.json.zst").read_bytes()))


# ----------------------------------------------------------------------------------------------- buckets
class _Keys:
    """Every shard's stored keys, read with their shingle set and tokens (numbers, words, symbols). At most
    ``OPEN_SHARDS`` shards' files are open at a time; the last key read with ``keep`` is kept for the next
    pair (candidates come sorted by their first member)."""

    def __init__(self, job: DedupJob):
        self.job = job
        self.open: dict[int, _Strings] = {}  # in order of last use
        self.last: tuple[int, tuple[str, frozenset, list[str]]] = (-1, ("", frozenset(), []))
        self.n = job.settings["ngram"]

    def key(self, gid: int, keep: bool = False) -> tuple[str, frozenset, list[str]]:
        """(key, its shingle set, its tokens) of a global id; ``keep``: for the next call."""
        if self.last[0] == gid:
            return self.last[1]
        s = gid >> 32
        store = self.open.pop(s, None) or _Strings(self.job.sig_dir(s), "keys")
        self.open[s] = store
        if len(self.open) > OPEN_SHARDS:
            self.open.pop(next(iter(self.open))).close()
        key = store[gid & 0xFFFFFFFF]
        text, n = shingle_text(key), self.n
        value = (key, frozenset(text[i : i + n] for i in range(max(len(text) - n + 1, 1))), tokens(key))
        if keep:
            self.last = (gid, value)
        return value

    def close(self) -> None:
        for store in self.open.values():
            store.close()
        self.open.clear()


def similarity(
    a: tuple[str, frozenset, list[str]], b: tuple[str, frozenset, list[str]], st: dict
) -> tuple[float, str]:
    """(Jaccard similarity of the shingle sets, verdict): ``exact`` (equal keys), ``near``,
    ``below_threshold`` or ``tokens_differ``: two short texts (fewer than ``long_shingles`` distinct
    shingles) must have the same numbers, words and symbols; two long ones a ``difflib`` ratio of at least
    ``token_threshold`` between their token sequences."""
    if a[0] == b[0]:
        return 1.0, "exact"
    sa, sb = a[1], b[1]
    inter = len(sa & sb)
    jaccard = inter / (len(sa) + len(sb) - inter)
    if not st["near"] or jaccard < st["threshold"]:
        return jaccard, "below_threshold"
    if a[2] != b[2]:
        if max(len(sa), len(sb)) < st["long_shingles"]:
            return jaccard, "tokens_differ"
        if difflib.SequenceMatcher(None, a[2], b[2], autojunk=False).ratio() < st["token_threshold"]:
            return jaccard, "tokens_differ"
    return jaccard, "near"


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
    store, verdicts = _Keys(job), Counter()
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
    _save(Path(job.work) / "pairs" / f"part-{t:04d}.npy", pairs)
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


# ---------------------------------------------------------------------------------------------- clusters
def components(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the pair graph: (nodes, the smallest node index of each one's component),
    by hooking to the smaller root and pointer jumping until every edge sits inside one component."""
    nodes, inv = np.unique(pairs, return_inverse=True)
    a, b = inv.reshape(-1, 2)[:, 0], inv.reshape(-1, 2)[:, 1]
    parent = np.arange(len(nodes))
    while True:
        pa, pb = parent[a], parent[b]
        if (pa == pb).all():
            return nodes, parent
        low = np.minimum(pa, pb)
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:
            jumped = parent[parent]
            if (jumped == parent).all():
                break
            parent = jumped


def _survivor_key(order: list[str]):
    def key(m: dict) -> tuple:
        parts: list[Any] = []
        for k in order:
            if k == "score":
                parts.append(-m["score"] if not math.isnan(m["score"]) else math.inf)
            elif k == "length":
                parts.append(-m["length"])
            else:
                parts.append(m["id"])
        return (*parts, m["gid"])

    return key


def _load_pairs(job: DedupJob) -> np.ndarray:
    parts = range(job.settings["partitions"])  # not a glob: an earlier run with more partitions left files
    files = [Path(job.work) / "pairs" / f"part-{t:04d}.npy" for t in parts]
    pairs = np.concatenate([np.load(f) for f in files]) if files else np.zeros(0, PAIR)
    if len(pairs):  # a pair that shares keys in two partitions was verified in both
        _, first = np.unique(np.stack([pairs["a"], pairs["b"]], axis=1), axis=0, return_index=True)
        pairs = pairs[np.sort(first)]
    return pairs


def resolve(
    members: list[dict], edges: dict[tuple[int, int], float], order: list[str], check=None
) -> list[tuple]:
    """The removals of one component: ``(removed, survivor, reason, similarity)`` member dicts.

    ``members`` have ``gid``, ``h`` (the key's hash) and the survivor-rule fields; ``edges`` maps verified
    gid pairs to their similarity. Equal keys form a class; classes in survivor order are kept unless a
    verified pair links them to a class kept before (see the module docstring). A class without such a pair
    is checked with ``check(gid, gid) -> similarity | None`` against the first ``INDIRECT_CHECKS`` kept
    classes of its component: the buckets pair a big bucket's members only as a star and a chain, so two
    similar records may have met only through a third."""
    rank = _survivor_key(order)
    classes: dict[tuple, list[dict]] = {}
    for m in sorted(members, key=rank):
        classes.setdefault(m["h"], []).append(m)
    class_of = {m["gid"]: h for h, group in classes.items() for m in group}
    links: dict[tuple, dict[tuple, float]] = {}
    for (a, b), sim in edges.items():
        ca, cb = class_of[a], class_of[b]
        if ca != cb:
            links.setdefault(ca, {})[cb] = max(sim, links.get(ca, {}).get(cb, 0.0))
            links.setdefault(cb, {})[ca] = max(sim, links.get(cb, {}).get(ca, 0.0))
    kept: dict[tuple, int] = {}  # class -> its place in survivor order
    out = []
    for h, group in classes.items():
        near = [(sim, -kept[k], k) for k, sim in links.get(h, {}).items() if k in kept]
        if not near and check is not None:
            for k in itertools.islice(kept, INDIRECT_CHECKS):
                sim = check(group[0]["gid"], classes[k][0]["gid"])
                if sim is not None:
                    near.append((sim, -kept[k], k))
        if not near:
            kept[h] = len(kept)
            out += [(m, group[0], REASONS["exact"], 1.0) for m in group[1:]]
            continue
        sim, _, best = max(near)
        out += [(m, classes[best][0], REASONS["near"], sim) for m in group]
    return out


def cluster_unit(args: tuple[DedupJob, int]) -> dict:
    job, _ = args
    pairs = _load_pairs(job)
    removals: dict[int, dict[int, list]] = {s: {} for s in range(len(job.inputs))}
    absorbed: dict[int, dict[int, list]] = {s: {} for s in range(len(job.inputs))}
    reasons: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    clusters = split = 0
    if len(pairs):
        ab = np.stack([pairs["a"], pairs["b"]], axis=1)
        nodes, comp = components(ab)
        members = _member_info(job, nodes)
        by_comp: dict[int, list[dict]] = {}
        for n, c in zip(nodes.tolist(), comp.tolist(), strict=True):
            by_comp.setdefault(c, []).append(members[n])
        edges_of: dict[int, dict[tuple[int, int], float]] = {}
        where = dict(zip(nodes.tolist(), comp.tolist(), strict=True))
        for a, b, sim in zip(pairs["a"].tolist(), pairs["b"].tolist(), pairs["sim"].tolist(), strict=True):
            edges_of.setdefault(where[a], {})[(a, b)] = sim
        order = list(job.settings["keep"])
        store = _Keys(job)

        def check(a: int, b: int) -> float | None:
            counts["indirect_checks"] += 1
            sim, verdict = similarity(store.key(a), store.key(b), job.settings)
            return sim if verdict in ("exact", "near") else None

        try:
            resolved = [(group, resolve(group, edges_of[c], order, check)) for c, group in by_comp.items()]
        finally:
            store.close()
        for group, removed in resolved:
            clusters += 1
            split += len(group) - len(removed) > 1
            totals: dict[int, list] = {}
            for m, survivor, reason, sim in removed:
                reasons[reason] += 1
                removals[m["gid"] >> 32][m["line"]] = [reason, survivor["id"], round(float(sim), 4)]
                count, corpora = totals.setdefault(survivor["gid"], [0, set()])
                totals[survivor["gid"]][0] = count + 1 + m["dup_count"]
                corpora.update([m["corpus"], *m["dup_corpora"]])
            for g, (count, corpora) in totals.items():
                absorbed[g >> 32][members[g]["line"]] = [count, sorted(corpora)]
    for s in removals:
        path = Path(job.work) / "remove" / f"{s:05d}.json.zst"
        body = {"remove": removals[s], "absorb": absorbed[s]}
        atomic_write_bytes(path, zstandard.compress(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)))
    return {"pairs": len(pairs), "clusters": clusters, "kept_apart": split, "removed": dict(reasons),
            "indirect_checks": counts["indirect_checks"]}  # fmt: skip


def _member_info(job: DedupJob, nodes: np.ndarray) -> dict[int, dict]:
    """Survivor-rule fields of the records in a cluster, read shard by shard (only the needed rows)."""
    out: dict[int, dict] = {}
    shards = nodes >> np.uint64(32)
    for s in np.unique(shards).tolist():
        folder = job.sig_dir(s)
        rows = (nodes[shards == s] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        cols = {c: np.array(_column(folder, c)[rows]) for c in ("line", "length", "score", "h1", "h2")}
        dups = _load_meta(folder)["dups"]
        ids, corpus_of = _Strings(folder, "ids"), _Strings(folder, "corpora")
        for j, r in enumerate(rows.tolist()):
            gid = (s << 32) | r
            count, corpora = dups.get(str(r), [0, []])
            out[gid] = {
                "gid": gid,
                "line": int(cols["line"][j]),
                "id": ids[r],
                "corpus": corpus_of[r],
                "dup_count": count,
                "dup_corpora": corpora,
                "length": int(cols["length"][j]),
                "score": float(cols["score"][j]),
                "h": (int(cols["h1"][j]), int(cols["h2"][j])),
            }
        ids.close()
        corpus_of.close()
    return out


# ------------------------------------------------------------------------------------------------- apply
def _no_content_detail(key: str, missing: bool) -> str:
    if missing:
        return f"the record has no {key} to compare"
    return f"its {key} is only punctuation and whitespace: no content left to compare or keep"


def apply_unit(args: tuple[DedupJob, list[int]]) -> dict:
    """Each shard of the group: kept records to its output, removed ones to its rejected file."""
    job, shards = args
    reports, total = [], Counts()
    for s in shards:
        body = orjson.loads(
            zstandard.decompress((Path(job.work) / "remove" / f"{s:05d}.json.zst").read_bytes())
        )
        rem, absorb = body["remove"], body["absorb"]
        empty = {str(i): missing for i, missing in _load_meta(job.sig_dir(s))["no_content"]}
        level = int(job.settings.get("zstd_level", 3))
        counts = Counts()
        with FilteredShard(job.outputs[s], job.rejected[s], job.quarantine[s], level) as files:
            out, rej, bad = files.kept, files.rejected, files.quarantine
            for i, rec, line in _records(job.inputs[s]):
                counts.in_ += 1
                i = str(i)
                if type(rec) is Bad:
                    counts.quarantined[rec.reason] += 1
                    bad.write(rec.to_dict())
                elif i in empty:
                    counts.rejected[REASONS["empty"]] += 1
                    detail = _no_content_detail(job.key, empty[i])
                    rej.write(
                        {**rec, "reject": {"stage": job.name, "reason": REASONS["empty"], "detail": detail}}
                    )
                elif i in rem:
                    reason, survivor, sim = rem[i]
                    counts.rejected[reason] += 1
                    what = "copy" if reason == REASONS["exact"] else f"near copy (n-gram Jaccard {sim:.2f})"
                    detail = f"{what} of {survivor} (by {job.key})"
                    reject = {"stage": job.name, "reason": reason, "detail": detail, "survivor": survivor,
                              "similarity": sim}  # fmt: skip
                    rej.write({**rec, "reject": reject})
                else:
                    counts.out += 1
                    if i in absorb:
                        count, corpora = absorb[i]
                        rec["dup_count"] = int(rec.get("dup_count") or 0) + count
                        rec["dup_corpora"] = sorted(set(rec.get("dup_corpora") or []) | set(corpora))
                        out.write(rec)
                    else:
                        out.write_line(line if line.endswith(b"\n") else line + b"\n")
            info = files.close()
        counts.check(job.outputs[s])
        reports.append(
            {
                "input": job.inputs[s],
                "output": job.outputs[s],
                "sha256": info.sha256,
                "bytes": info.bytes,
                **counts.to_dict(),
            }
        )
        total += counts
    return {"stage": job.name, **total.to_dict(), "shards": reports}


def dedup_stats(run_dir: str | Path, name: str, partitions: int) -> dict:
    """What the buckets and clusters markers of dedup ``name`` say (for the report): candidate pair checks
    (a pair is checked in every partition where it shares a key) and their rejections by reason, the
    distinct verified pairs, clusters, those that kept more than one record apart, and removals by reason.
    Counts of units without a marker are missing from the sums."""
    out: dict[str, Any] = {"candidates": 0, "rejected": Counter()}
    phase = f"{name}.buckets"
    for t in range(partitions):
        m = read_marker(run_dir, phase, f"{phase}-{t:05d}") or {}
        out["candidates"] += m.get("candidates", 0)
        out["rejected"].update(m.get("rejected", {}))
    m = read_marker(run_dir, f"{name}.clusters", f"{name}.clusters-00000") or {}
    out["rejected"] = dict(out["rejected"])
    keys = ("pairs", "clusters", "kept_apart", "indirect_checks")
    return (
        out
        | {"verified": m.get("pairs", 0)}
        | {k: m.get(k, 0) for k in keys[1:]}
        | {"removed": m.get("removed", {})}
    )


# ------------------------------------------------------------------------------------------------ phases
def settings_of(section: Any, zstd_level: int = 3) -> dict:
    """The dedup section as plain values (what the phases need and what their hash covers)."""
    from omegaconf import OmegaConf

    st = OmegaConf.to_container(section, resolve=True) if not isinstance(section, dict) else dict(section)
    st.pop("raw", None)
    return {**st, "zstd_level": zstd_level}


def dedup_phases(job: DedupJob, upstream_hash: str) -> list[Phase]:
    """The four phases of one dedup; their hash covers the settings, the inputs and what made them."""
    st = job.settings
    h = config_hash({"settings": st, "key": job.key, "inputs": list(job.inputs), "upstream": upstream_hash})
    spt = st["shards_per_task"]
    groups = [list(range(i, min(i + spt, len(job.inputs)))) for i in range(0, len(job.inputs), spt)]
    mod = "kun_hpc.merge.dedup"

    def phase(step: str, fn: str, args: list) -> Phase:
        name = f"{job.name}.{step}"
        return Phase(
            name, [PhaseUnit(name, i, f"{mod}:{fn}", (job, a), job.run_dir, h) for i, a in enumerate(args)]
        )

    return [
        phase("signatures", "signature_unit", groups),
        phase("buckets", "bucket_unit", list(range(st["partitions"]))),
        phase("clusters", "cluster_unit", [0]),
        phase("apply", "apply_unit", groups),
    ]


def make_job(
    name: str, key: str, inputs: list[Path], in_root: Path, out_root: Path, settings: dict, run_dir: str
) -> DedupJob:
    """A dedup of ``inputs`` (under ``in_root``) into ``out_root``, keeping their relative paths; rejected
    and quarantined records under ``out_root/rejected`` and ``out_root/quarantine``, work files under
    ``out_root/_work``."""
    rel = [p.relative_to(in_root) for p in inputs]
    return DedupJob(
        name=name,
        key=key,
        inputs=tuple(str(p) for p in inputs),
        outputs=tuple(str(out_root / r) for r in rel),
        rejected=tuple(str(out_root / "rejected" / r) for r in rel),
        quarantine=tuple(str(out_root / "quarantine" / r) for r in rel),
        work=str(out_root / "_work"),
        settings=settings,
        run_dir=run_dir,
    )
