"""The train/validation split of an export (``kun-hpc export``): seeded, made after the dedup and by groups of
near-copies, so that no two rows that look alike sit on both sides.

**What the merge's dedup leaves.** The dedup (kun_hpc/merge/dedup/) removes a record only when a *verified*
pair links it to a kept one: n-gram Jaccard of the normalized keys at least ``dedup.threshold`` (0.5) and the
same numbers, words and symbols. Records alike below that, or alike with other numbers, stay (``计算3+5``
beside ``计算3-5``; a rewording at Jaccard 0.4; the two ends of a chain a ~ b ~ c whose middle was removed),
and so do pairs alike in a field the dedup did not compare (two instructions made from one unit: one
output). Those are near-copies a validation set must not share with the training set.

**Near-copies, for the split.** Two rows are near-copies when their normalized instructions
(:func:`~kun_hpc.merge.normalize.make_normalizer` with the run's ``dedup.normalize``) are equal, or their
normalized outputs are, or their instructions share a MinHash LSH band bucket, computed exactly as the run's
dedup computes them (its saved ``dedup`` section: ``ngram``, ``permutations``, ``seed``, ``bands``,
``long_bands``, ``long_shingles``, ``threshold``; :func:`~kun_hpc.merge.dedup.signatures.band_entries`),
*and* their estimated n-gram Jaccard (the share of equal MinHash values) is at least ``similarity`` (by
default the dedup's ``threshold``, without its check of numbers and words: ``计算3+5`` and ``计算3-5`` are
near-copies here; ``kun-hpc export --similarity 0.4`` reaches below the threshold). Sharing a bucket alone is
not enough, and neither is a low ``similarity``: templated instructions (``请赏析李白的《静夜思》。``) share
buckets through their common words and chain through them. On 332,881 such poetry pairs the largest group
held 94% of the rows with buckets alone, 81% at similarity 0.3, 56% at 0.4 and 5.9% at 0.5 (docs/export.md).

**The rule.** (1) Groups: union-find (:func:`~kun_hpc.merge.dedup.clusters.components`) over the equal
normalized instructions and outputs and over the near-copy pairs among each bucket's members taken as a star
and a chain (each member with the bucket's first and with the one before it, as the dedup pairs a bucket).
(2) Each group goes to validation when ``xxh3_64(f"{seed}\\0{smallest id of the group}") / 2**64`` is below
``fraction`` (a Bernoulli draw per group, seeded, independent of its size and of the other groups, so a
dataset that grows keeps its old groups on their side); when that draws no group, the group with the
smallest draw goes, and when it draws every group, the one with the largest stays in train. (3) Then
every bucket that holds rows of both sides is checked in full, validation member against train member: a
validation row with a near-copy in train moves to train with its group, until no bucket has such a pair
(the star and the chain do not pair every member of a big bucket). So for any two rows on different sides:
no equal normalized instruction, no equal normalized output, and no shared band bucket at estimated Jaccard
``similarity`` or more (tests/merge/test_export.py checks it pair by pair). Two near-copies that share no
bucket stay apart, with the probability the dedup's S-curve gives (docs/merge.md): under 0.5% at Jaccard
0.5 with the default bands. Memory: per row the id, its signature (4 bytes a permutation) and its band
entries (12 bytes each, ``bands`` of them, both bandings near the long-text boundary), with the pairs the
grouping checks: the export of 332,881 pairs peaked at 1.7 GiB (tools/bench_export.py, docs/export.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import xxhash

from kun_hpc.merge.dedup.clusters import components
from kun_hpc.merge.dedup.signatures import band_entries
from kun_hpc.merge.dedup.storage import ENTRY
from kun_hpc.merge.minhash import MinHasher
from kun_hpc.merge.normalize import make_normalizer, shingle_text

LINKS = ("instruction_band", "instruction_exact", "output_exact")  # the kinds of link, as the manifest counts
CHUNK = 1 << 14  # pairs (or validation rows) whose signatures are compared at once


def draw(seed: int, group_id: str) -> float:
    """A group's seeded draw in [0, 1): ``xxh3_64(f"{seed}\\0{group_id}") / 2**64``."""
    return xxhash.xxh3_64_intdigest(f"{seed}\0{group_id}".encode()) / 2.0**64


def _sorted(parts: list[np.ndarray]) -> np.ndarray:
    e = np.concatenate(parts) if parts else np.zeros(0, ENTRY)
    return e[np.lexsort((e["row"], e["key"]))]


def _distinct(pairs: np.ndarray, n: int) -> np.ndarray:
    """Pairs (a, b) with a < b, each once."""
    a, b = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    code = np.unique(a[a != b] * n + b[a != b])
    return np.stack([code // n, code % n], axis=1) if len(code) else np.zeros((0, 2), np.int64)


@dataclass
class Grouper:
    """Collects a dataset's rows batch by batch (:meth:`add`, in the order they are read), groups them
    (:meth:`groups`) and keeps near-copies off the two sides of a split (:meth:`separate`). ``settings``:
    the run's dedup section as plain values (:func:`kun_hpc.merge.dedup.settings_of`); ``similarity``: the
    estimated n-gram Jaccard from which two instructions sharing a band bucket are near-copies (default the
    dedup's ``threshold``)."""

    settings: dict
    similarity: float | None = None  # None: the dedup's threshold
    rows: int = 0
    _entries: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in LINKS})
    _signatures: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.similarity is None:
            self.similarity = float(self.settings["threshold"])
        if not 0 < self.similarity <= 1:
            raise ValueError(f"the split's similarity must be in (0, 1], not {self.similarity}")
        st = self.settings
        self._normalize = make_normalizer(st["normalize"])
        self._hasher = MinHasher(st["ngram"], st["permutations"], st["seed"])

    def add(self, instructions: list[str], outputs: list[str]) -> None:
        """The next rows: their instruction and output (strings)."""
        first = self.rows
        ins = [self._normalize(t) for t in instructions]
        outs = [self._normalize(t) for t in outputs]
        sig, distinct = self._hasher.signatures([shingle_text(k) for k in ins])
        self._signatures.append(sig)
        keyed = np.array([i for i, k in enumerate(ins) if k], dtype=np.int64)  # "。" normalizes to ""
        if len(keyed):
            rows = (first + keyed).tolist()
            e = band_entries(
                rows, [ins[i] for i in keyed], self._hasher, self.settings, (sig[keyed], distinct[keyed])
            )
            self._entries["instruction_band"].append(e)
        for kind, keys in (("instruction_exact", ins), ("output_exact", outs)):
            got = [(first + i, xxhash.xxh3_64_intdigest(k.encode())) for i, k in enumerate(keys) if k]
            e = np.zeros(len(got), dtype=ENTRY)
            if got:
                e["row"], e["key"] = zip(*got, strict=True)
            self._entries[kind].append(e)
        self.rows += len(instructions)

    def _near(self, pairs: np.ndarray) -> np.ndarray:
        """Which row pairs are near-copies by their signatures (estimated Jaccard >= ``similarity``)."""
        out = np.zeros(len(pairs), dtype=bool)
        for lo in range(0, len(pairs), CHUNK):
            a, b = pairs[lo : lo + CHUNK, 0], pairs[lo : lo + CHUNK, 1]
            out[lo : lo + CHUNK] = (self._sig[a] == self._sig[b]).mean(axis=1) >= self.similarity
        return out

    def groups(self) -> tuple[np.ndarray, Counter]:
        """Each row's group (int64: the smallest row index of its group) and the links that made them: the
        distinct pairs of rows joined, by kind (rows sharing an exact key are joined as a chain; a bucket's
        members as a star and a chain, where near-copies)."""
        perms = self.settings["permutations"]
        self._sig = np.concatenate(self._signatures) if self._signatures else np.zeros((0, perms), np.uint32)
        self._signatures = [self._sig]
        labels = np.arange(self.rows, dtype=np.int64)
        links: Counter[str] = Counter()
        edges = []
        for kind, parts in self._entries.items():
            e = _sorted(parts)
            rows = e["row"].astype(np.int64)
            later = np.flatnonzero(e["key"][1:] == e["key"][:-1]) + 1  # entries after their bucket's first
            if kind == "instruction_band":
                self._buckets = e
                starts = np.flatnonzero(np.r_[True, e["key"][1:] != e["key"][:-1]])
                first = np.repeat(starts, np.diff(np.r_[starts, len(e)]))
                pairs = np.concatenate([np.stack([rows[first[later]], rows[later]], axis=1),
                                        np.stack([rows[later - 1], rows[later]], axis=1)])  # fmt: skip
                pairs = _distinct(pairs, max(self.rows, 1))
                pairs = pairs[self._near(pairs)]
            else:
                pairs = _distinct(np.stack([rows[later - 1], rows[later]], axis=1), max(self.rows, 1))
            links[kind] = len(pairs)
            edges.append(pairs)
        pairs = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
        if len(pairs):
            nodes, parent = components(pairs)
            labels[nodes] = nodes[parent]
        return labels, links

    def separate(self, validation: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, Counter]:
        """``validation`` (bool per row, from :func:`assign`) after step (3) of the rule: every validation row
        with a near-copy in train, sharing a bucket, moved to train with its group, until none is left; and
        how many groups and rows moved. Call after :meth:`groups`."""
        validation = validation.copy()
        moved: Counter[str] = Counter()
        e = self._buckets
        rows = e["row"].astype(np.int64)
        starts = np.flatnonzero(np.r_[True, e["key"][1:] != e["key"][:-1]]) if len(e) else np.zeros(0, int)
        ends = np.r_[starts[1:], len(e)]
        while True:
            side = validation[rows]
            held = np.add.reduceat(side.astype(np.int64), starts) if len(e) else np.zeros(0, np.int64)
            mixed = np.flatnonzero((held > 0) & (held < ends - starts))
            caught: set[int] = set()
            for b in mixed.tolist():
                members = rows[starts[b] : ends[b]]
                v, t = members[side[starts[b] : ends[b]]], members[~side[starts[b] : ends[b]]]
                for lo in range(0, len(v), max(1, CHUNK // len(t))):
                    part = v[lo : lo + max(1, CHUNK // len(t))]
                    same = (self._sig[part][:, None, :] == self._sig[t][None, :, :]).mean(axis=2)
                    caught.update(part[(same >= self.similarity).any(axis=1)].tolist())
            if not caught:
                return validation, moved
            groups = np.unique(labels[list(caught)])
            back = np.isin(labels, groups) & validation
            moved["groups"] += len(groups)
            moved["rows"] += int(back.sum())
            validation &= ~back


def assign(ids: list[str], labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which rows go to validation (bool per row), whole groups at a time, by step (2) of the rule (the
    module docstring). ``ids``: each row's record id; ``labels``: each row's group (:meth:`Grouper.groups`);
    ``fraction`` in [0, 1) (ValueError otherwise); 0 puts every row in train."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), not {fraction}")
    n = len(ids)
    validation = np.zeros(n, dtype=bool)
    if fraction == 0 or n == 0:
        return validation
    smallest: dict[int, str] = {}
    for label, rid in zip(labels.tolist(), ids, strict=True):
        if label not in smallest or rid < smallest[label]:
            smallest[label] = rid
    order = sorted(smallest)
    u = np.array([draw(seed, smallest[g]) for g in order])
    chosen = u < fraction
    if len(order) > 1 and not chosen.any():
        chosen[np.argmin(u)] = True
    if chosen.all():
        chosen[np.argmax(u)] = False
    return np.isin(labels, np.array(order, dtype=np.int64)[chosen])
