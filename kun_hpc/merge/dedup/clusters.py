"""Phase 3, clusters: components of the verified pairs, the survivors of each, and the removal lists
of every shard (``remove/<s>.json.zst``; see the package docstring for the survivor rule).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import zstandard

from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.merge.dedup.job import REASONS, DedupJob
from kun_hpc.merge.dedup.storage import PAIR, Strings, load_meta, read_column
from kun_hpc.merge.dedup.verify import Keys, similarity

INDIRECT_CHECKS = 64  # kept classes of its cluster a class without a verified pair to one is checked against


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
        store = Keys(job)

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
        cols = {c: np.array(read_column(folder, c)[rows]) for c in ("line", "length", "score", "h1", "h2")}
        dups = load_meta(folder)["dups"]
        ids, corpus_of = Strings(folder, "ids"), Strings(folder, "corpora")
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
