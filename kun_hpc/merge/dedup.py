"""Exact and near-duplicate removal across every shard of every corpus, as four global phases.

::

    signatures (array, per shard group)  normalise the key text; its xxh3-128 (exact) and MinHash band
                                          keys (near), per shard in ``partitions`` files by key % partitions
    buckets    (array, per partition)    partition t of every shard: sort by (band, key); equal keys -> pairs
    clusters   (one task)                union-find over the pairs; a survivor per cluster; removal lists
    apply      (array, per shard group)  kept records -> output shard, removed -> rejected (reason, survivor)

Memory per task is bounded whatever the corpus size: a signature task holds one shard's keys, a bucket task
``1/partitions`` of all keys, the cluster task only the documents that have a duplicate, an apply task one
shard's removal list. Exact duplicates go through the same buckets (band ``EXACT``, keyed by the 128-bit
hash).

The survivor of a cluster is chosen by ``dedup.keep`` (highest ``score``, else longest, else smallest id,
then input order): it depends only on the cluster, never on how the work was cut into tasks, and the
clusters are the connected components of "shares an exact hash or a band key", which no partitioning
changes. A removed record is ``duplicate_exact`` when its normalised text equals its survivor's, else
``near_duplicate``; its rejected line carries the survivor's id. Records without the key (no instruction
yet) or whose normalised key is empty are never removed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import xxhash
import zstandard

from kun_hpc.cluster.phases import Phase, PhaseUnit
from kun_hpc.config import config_hash
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.quarantine import Bad
from kun_hpc.io.shards import ZstdJsonlWriter
from kun_hpc.merge.minhash import MinHasher
from kun_hpc.merge.normalize import make_normalizer
from kun_hpc.stages.base import _input_items, check_accounting

EXACT = np.uint16(0xFFFF)  # the band number of exact-hash entries
ENTRY = np.dtype([("band", "<u2"), ("k1", "<u8"), ("k2", "<u8"), ("doc", "<u4")])
REASONS = {"exact": "duplicate_exact", "near": "near_duplicate"}


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
    """What a record is compared by; None when it has no such field (it is then never removed)."""
    if key == "pair":
        ins, out = record.get("instruction"), record.get("answer", record.get("output"))
        return None if not isinstance(ins, str) or not isinstance(out, str) else f"{ins}\n\x00\n{out}"
    value = record.get(key)
    return value if isinstance(value, str) else None


def _records(path: str) -> Iterator[tuple[int, dict | Bad, bytes]]:
    """(line index, record or Bad, raw line) of a shard; indexes match across phases."""
    for i, item in enumerate(_input_items(path)):
        if type(item) is Bad:
            yield i, item, b""
            continue
        where, line = item
        try:
            yield i, orjson.loads(line), line
        except orjson.JSONDecodeError as e:
            yield i, Bad(Path(path).name, where, "invalid_json", str(e), line), line


# ------------------------------------------------------------------------------------------- signatures
def signature_unit(args: tuple[DedupJob, list[int]]) -> dict:
    job, shards = args
    st = job.settings
    normalize = make_normalizer(st["normalize"])
    hasher = MinHasher(st["ngram"], st["bands"], st["rows"], st["seed"])
    totals: Counter[str] = Counter()
    for s in shards:
        _shard_signatures(job, s, normalize, hasher, totals)
    return {"counts": dict(totals)}


def _hash_batch(docs: list[int], texts: list[str], hasher: MinHasher, st: dict) -> tuple[list, np.ndarray]:
    """The bucket entries of a batch (exact and/or band keys) and its 128-bit exact hashes (2 columns)."""
    d = np.array(docs, dtype=np.uint32)
    digests = [xxhash.xxh3_128_intdigest(t.encode()) for t in texts]
    h = np.array([(x >> 64, x & (2**64 - 1)) for x in digests], dtype=np.uint64).reshape(-1, 2)
    entries = []
    if st["exact"]:
        e = np.zeros(len(d), dtype=ENTRY)
        e["band"], e["k1"], e["k2"], e["doc"] = EXACT, h[:, 0], h[:, 1], d
        entries.append(e)
    if st["near"]:
        keys = hasher.band_keys(hasher.signatures(texts))
        e = np.zeros(keys.shape, dtype=ENTRY)
        e["band"] = np.arange(hasher.bands, dtype=np.uint16)[None, :]
        e["k1"], e["doc"] = keys, d[:, None]
        entries.append(e.ravel())
    return entries, h


def _shard_signatures(job: DedupJob, s: int, normalize, hasher: MinHasher, totals: Counter) -> None:
    st = job.settings
    entries: list[np.ndarray] = []
    hashes: list[np.ndarray] = []
    ids: list[str] = []
    cols: dict[str, list] = {"doc": [], "length": [], "score": []}
    docs: list[int] = []
    texts: list[str] = []
    for i, rec, _ in _records(job.inputs[s]):
        totals["in"] += 1
        if type(rec) is Bad:
            totals["quarantined"] += 1
            continue
        raw = key_text(rec, job.key)
        norm = normalize(raw) if raw is not None else ""
        if not norm:
            totals["no_key" if raw is None else "empty_key"] += 1
            continue
        score = rec.get("score")
        cols["doc"].append(i)
        cols["length"].append(len(raw))
        cols["score"].append(float(score) if isinstance(score, (int, float)) else math.nan)
        ids.append(str(rec.get("id", "")))
        docs.append(i)
        texts.append(norm)
        if len(docs) >= st["batch_docs"]:
            e, h = _hash_batch(docs, texts, hasher, st)
            entries += e
            hashes.append(h)
            docs, texts = [], []
    if docs:
        e, h = _hash_batch(docs, texts, hasher, st)
        entries += e
        hashes.append(h)
    totals["hashed"] += len(ids)
    folder = job.sig_dir(s)
    folder.mkdir(parents=True, exist_ok=True)
    allk = np.concatenate(entries) if entries else np.zeros(0, dtype=ENTRY)
    parts = st["partitions"]
    which = allk["k1"] % np.uint64(parts)
    for t in range(parts):
        _save(folder / f"part-{t:04d}.npy", allk[which == t])
    h = np.concatenate(hashes) if hashes else np.zeros((0, 2), np.uint64)
    table = {
        "doc": np.array(cols["doc"], dtype=np.uint32),
        "length": np.array(cols["length"], dtype=np.int64),
        "score": np.array(cols["score"], dtype=np.float64),
        "h1": h[:, 0].copy(),
        "h2": h[:, 1].copy(),
    }
    for name, arr in table.items():
        _save(folder / f"docs.{name}.npy", arr)
    atomic_write_bytes(folder / "ids.json.zst", zstandard.compress(orjson.dumps(ids)))


def _save(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------- buckets
def bucket_unit(args: tuple[DedupJob, int]) -> dict:
    """Partition t of every shard's keys: documents with an equal (band, key) become pairs (a star per
    group: its first member with each other one)."""
    job, t = args
    chunks, shard_of = [], []
    for s in range(len(job.inputs)):
        e = np.load(job.sig_dir(s) / f"part-{t:04d}.npy")
        chunks.append(e)
        shard_of.append(np.full(len(e), s, dtype=np.uint64))
    e = np.concatenate(chunks) if chunks else np.zeros(0, dtype=ENTRY)
    gid = (np.concatenate(shard_of) << np.uint64(32)) | e["doc"].astype(np.uint64) if chunks else e["doc"]
    pairs = np.zeros((0, 2), np.uint64)
    if len(gid):  # no entries at all when nothing reached this pass
        order = np.lexsort((gid, e["k2"], e["k1"], e["band"]))
        e, gid = e[order], gid[order]
        b, k1, k2 = e["band"], e["k1"], e["k2"]
        same = (b[1:] == b[:-1]) & (k1[1:] == k1[:-1]) & (k2[1:] == k2[:-1])
        starts = np.flatnonzero(np.r_[True, ~same])
        head = np.repeat(gid[starts], np.diff(np.r_[starts, len(gid)]))
        keep = head != gid
        if keep.any():
            pairs = np.unique(np.stack([head[keep], gid[keep]], axis=1), axis=0)
    _save(Path(job.work) / "pairs" / f"part-{t:04d}.npy", pairs.astype(np.uint64))
    return {"entries": len(e), "pairs": len(pairs)}


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


def cluster_unit(args: tuple[DedupJob, int]) -> dict:
    job, _ = args
    files = sorted((Path(job.work) / "pairs").glob("part-*.npy"))
    pairs = np.concatenate([np.load(f).reshape(-1, 2) for f in files]) if files else np.zeros((0, 2))
    pairs = pairs.astype(np.uint64)
    removals: dict[int, dict[int, list]] = {s: {} for s in range(len(job.inputs))}
    reasons: Counter[str] = Counter()
    clusters = 0
    if len(pairs):
        nodes, comp = components(pairs)
        members = _member_info(job, nodes)
        by_comp: dict[int, list[dict]] = {}
        for n, c in zip(nodes.tolist(), comp.tolist(), strict=True):
            by_comp.setdefault(c, []).append(members[n])
        key = _survivor_key(list(job.settings["keep"]))
        for group in by_comp.values():
            clusters += 1
            group.sort(key=key)
            first = group[0]
            for m in group[1:]:
                reason = REASONS["exact" if m["h"] == first["h"] else "near"]
                reasons[reason] += 1
                removals[m["gid"] >> 32][m["gid"] & 0xFFFFFFFF] = [reason, first["id"]]
    for s, rem in removals.items():
        path = Path(job.work) / "remove" / f"{s:05d}.json.zst"
        atomic_write_bytes(path, zstandard.compress(orjson.dumps(rem, option=orjson.OPT_NON_STR_KEYS)))
    return {"pairs": len(pairs), "clusters": clusters, "removed": dict(reasons)}


def _member_info(job: DedupJob, nodes: np.ndarray) -> dict[int, dict]:
    """Survivor-rule fields of the documents in a cluster, read shard by shard (only the needed rows)."""
    out: dict[int, dict] = {}
    shards = nodes >> np.uint64(32)
    for s in np.unique(shards).tolist():
        folder = job.sig_dir(s)
        docs = np.load(folder / "docs.doc.npy")
        want = (nodes[shards == s] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        rows = np.searchsorted(docs, want)
        cols = {c: np.load(folder / f"docs.{c}.npy")[rows] for c in ("length", "score", "h1", "h2")}
        ids = orjson.loads(zstandard.decompress((folder / "ids.json.zst").read_bytes()))
        for j, (d, r) in enumerate(zip(want.tolist(), rows.tolist(), strict=True)):
            gid = (s << 32) | d
            out[gid] = {
                "gid": gid,
                "id": ids[r],
                "length": int(cols["length"][j]),
                "score": float(cols["score"][j]),
                "h": (int(cols["h1"][j]), int(cols["h2"][j])),
            }
    return out


# ------------------------------------------------------------------------------------------------- apply
def apply_unit(args: tuple[DedupJob, list[int]]) -> dict:
    """Each shard of the group: kept records to its output, removed ones to its rejected file."""
    job, shards = args
    reports = []
    for s in shards:
        rem = orjson.loads(
            zstandard.decompress((Path(job.work) / "remove" / f"{s:05d}.json.zst").read_bytes())
        )
        level = int(job.settings.get("zstd_level", 3))
        out = ZstdJsonlWriter(job.outputs[s], level)
        rej = ZstdJsonlWriter(job.rejected[s], level)
        bad = ZstdJsonlWriter(job.quarantine[s], level)
        counts: dict[str, Any] = {"in": 0, "out": 0, "rejected": Counter(), "quarantined": Counter()}
        try:
            for i, rec, line in _records(job.inputs[s]):
                counts["in"] += 1
                if type(rec) is Bad:
                    counts["quarantined"][rec.reason] += 1
                    bad.write(rec.to_dict())
                elif str(i) in rem:
                    reason, survivor = rem[str(i)]
                    counts["rejected"][reason] += 1
                    detail = f"duplicate of {survivor} (by {job.key})"
                    reject = {"stage": job.name, "reason": reason, "detail": detail, "survivor": survivor}
                    rej.write({**rec, "reject": reject})
                else:
                    counts["out"] += 1
                    out.write_line(line if line.endswith(b"\n") else line + b"\n")
            info = out.close()
            rej.close()
            bad.close()
        except BaseException:
            for w in (out, rej, bad):
                w.abort()
            raise
        check_accounting(job.outputs[s], counts)
        reports.append(
            {
                "input": job.inputs[s],
                "output": job.outputs[s],
                "sha256": info.sha256,
                "bytes": info.bytes,
                **{k: dict(v) if isinstance(v, Counter) else v for k, v in counts.items()},
            }
        )
    return {
        "stage": job.name,
        "in": sum(r["in"] for r in reports),
        "out": sum(r["out"] for r in reports),
        "rejected": dict(sum((Counter(r["rejected"]) for r in reports), Counter())),
        "quarantined": dict(sum((Counter(r["quarantined"]) for r in reports), Counter())),
        "shards": reports,
    }


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
