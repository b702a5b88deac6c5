"""MinHash over character n-grams, vectorised with numpy, and the LSH band keys of two bandings.

Chinese has no spaces, so a document's shingles are its character n-grams (not words, as in datatrove's
MinHash). A batch of documents is laid out as one array of code points, each document followed by ``n - 1``
zeros, so that every n-gram is a window of that array that never reaches into the next document; a text
shorter than ``n`` has one shingle, itself. Shingles are hashed to 64 bits by a polynomial over the window's
code points and the splitmix64 finaliser -- n vectorised passes instead of one xxhash call per shingle,
which would dominate the run time from Python. Permutation ``i`` is the multiply-shift hash
``(a_i * h + b_i) mod 2**64 >> 32`` with ``a_i`` odd; the signature is the minimum over a document's
shingles. The permutations run over blocks of ``BLOCK`` shingles; the shingle arrays of a batch take about
100 bytes per character, so a batch's memory follows its characters (``dedup.batch_docs`` x unit length).

A banding cuts the ``permutations`` signature values into ``bands`` bands of ``rows = permutations / bands``
values; band ``j``'s key is a 64-bit hash of its values and of ``j`` (plus the banding's tag, so that two
bandings never share keys). Two documents that share a band key are candidate near-duplicates, with
probability ``1 - (1 - s**rows)**bands`` at Jaccard similarity ``s`` (:func:`candidate_probability`).
"""

from __future__ import annotations

import numpy as np

BLOCK = 1 << 11  # shingles per (BLOCK, permutations) matrix
_M = np.uint64(0x100000001B3)  # the FNV-64 prime, as the polynomial's multiplier
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
EMPTY = np.uint32(0xFFFFFFFF)  # signature of a document without shingles (never bucketed)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _C1
    x = x ^ (x >> np.uint64(27))
    x = x * _C2
    return x ^ (x >> np.uint64(31))


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard similarity ``s`` share at least one of ``bands`` band keys
    of ``rows`` values each (Leskovec, Rajaraman and Ullman, *Mining of Massive Datasets*, ch. 3.4)."""
    return 1.0 - (1.0 - s**rows) ** bands


class MinHasher:
    """``permutations`` MinHash values per document over character ``ngram`` shingles."""

    def __init__(self, ngram: int = 3, permutations: int = 120, seed: int = 1):
        self.n, self.permutations = ngram, permutations
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=permutations, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=permutations, dtype=np.uint64)

    def shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """64-bit shingle hashes of all texts, and where each text's start (``len(texts) + 1`` offsets)."""
        n = self.n
        pad = "\0" * (n - 1)
        cps = np.frombuffer((pad.join(texts) + pad).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        starts = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths + (n - 1), out=starts[1:])
        total = len(cps) - (n - 1)
        h = np.zeros(max(total, 0), dtype=np.uint64)
        for k in range(n):
            h = h * _M + cps[k : k + total]
        h = mix64(h)
        # valid windows: start .. start + max(len - n + 1, 1) - 1 of each non-empty text
        count = np.where(lengths > 0, np.maximum(lengths - n + 1, 1), 0)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(count, out=offsets[1:])
        idx = np.repeat(starts[:-1] - offsets[:-1], count) + np.arange(offsets[-1], dtype=np.int64)
        return h[idx], offsets

    def signatures(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(len(texts), permutations)`` uint32 MinHash signatures (``EMPTY`` rows for empty texts) and
        each text's number of distinct shingles (int64; a repeated n-gram counts once)."""
        h, offsets = self.shingles(texts)
        sig = np.full((len(texts), self.permutations), EMPTY, dtype=np.uint32)
        doc_of = np.repeat(np.arange(len(texts)), np.diff(offsets))
        order = np.lexsort((h, doc_of))
        hs, ds = h[order], doc_of[order]
        new = np.r_[True, (hs[1:] != hs[:-1]) | (ds[1:] != ds[:-1])] if len(hs) else np.zeros(0, bool)
        distinct = np.bincount(ds[new], minlength=len(texts)).astype(np.int64)
        for lo in range(0, len(h), BLOCK):
            hi = min(lo + BLOCK, len(h))
            vals = ((h[lo:hi, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)).astype(np.uint32)
            docs = doc_of[lo:hi]
            cut = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])  # first shingle of each doc in block
            mins = np.minimum.reduceat(vals, cut, axis=0)
            ids = docs[cut]
            sig[ids] = np.minimum(sig[ids], mins)
        return sig, distinct

    def band_keys(self, sig: np.ndarray, bands: int, tag: int = 0) -> np.ndarray:
        """``(len(sig), bands)`` uint64 keys of ``sig`` cut into ``bands`` bands (``permutations`` must be a
        multiple of ``bands``); band ``j``'s key hashes its values, ``j`` and ``tag``."""
        rows = self.permutations // bands
        s = sig.reshape(len(sig), bands, rows).astype(np.uint64)
        key = np.broadcast_to(
            mix64(np.arange(bands, dtype=np.uint64) + np.uint64(tag << 16)), (len(sig), bands)
        )
        for r in range(rows):
            key = mix64(key * _M + s[:, :, r] + np.uint64(r + 1))
        return key
