"""Verification of a candidate pair: the stored keys read back with their shingle sets and tokens, and
the Jaccard and token checks that make a pair a near duplicate (see the package docstring).
"""

from __future__ import annotations

import difflib

from kun_hpc.merge.dedup.job import DedupJob
from kun_hpc.merge.dedup.storage import Strings
from kun_hpc.merge.normalize import shingle_text, tokens

OPEN_SHARDS = 64  # shards whose key files a task keeps open at once


class Keys:
    """Every shard's stored keys, read with their shingle set and tokens (numbers, words, symbols). At most
    ``OPEN_SHARDS`` shards' files are open at a time; the last key read with ``keep`` is kept for the next
    pair (candidates come sorted by their first member)."""

    def __init__(self, job: DedupJob):
        self.job = job
        self.open: dict[int, Strings] = {}  # in order of last use
        self.last: tuple[int, tuple[str, frozenset, list[str]]] = (-1, ("", frozenset(), []))
        self.n = job.settings["ngram"]

    def key(self, gid: int, keep: bool = False) -> tuple[str, frozenset, list[str]]:
        """(key, its shingle set, its tokens) of a global id; ``keep``: for the next call."""
        if self.last[0] == gid:
            return self.last[1]
        s = gid >> 32
        store = self.open.pop(s, None) or Strings(self.job.sig_dir(s), "keys")
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
