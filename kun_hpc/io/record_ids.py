"""Record ids are keys across a whole run (dedup survivors, ``inspect``, rejected files and the dataset name
records by id), so sharding lets no id through twice (issue 12).

The readers make ids unique by construction where the input allows it (WuDao: ``uniqueKey``, else file and
native id; kun_hpc/io/readers/). What repeats all the same is found here, in two steps:

* within one shard unit (one input piece), :class:`UnitIds` remembers every id it let through; a repeat is
  quarantined as ``duplicate_id``, naming where the id was first seen;
* across the units of a corpus, each unit leaves the 64-bit hashes of its ids (:meth:`UnitIds.save`) and
  :func:`repeated_across` finds the hashes seen in an earlier unit, partition by partition so that memory
  stays bounded: about 24 bytes per id of one partition (``max_ids_per_pass`` ids, 16.8 M by default:
  ~400 MB), however large the corpus. Hash matches are candidates only; the caller confirms them on the ids
  themselves before anything is quarantined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xxhash

_hash128 = xxhash.xxh3_128_intdigest
_hash64 = xxhash.xxh3_64_intdigest


class UnitIds:
    """The ids one shard unit let through, in order.

    :meth:`first_seen` returns where an id was first seen when it repeats (None for a new id, which is then
    remembered). Memory: about 150 bytes per id (a 128-bit hash and the first position), so a unit of one
    million records holds ~150 MB.
    """

    def __init__(self) -> None:
        self._first: dict[int, str] = {}
        self._hashes: list[int] = []

    def first_seen(self, record_id: str, where: str) -> str | None:
        data = record_id.encode("utf-8", "surrogatepass")
        key = _hash128(data)
        first = self._first.get(key)
        if first is not None:
            return first
        self._first[key] = where
        self._hashes.append(_hash64(data))
        return None

    def save(self, path: str | Path) -> None:
        """The 64-bit hashes of the ids let through, in record order, as a ``.npy`` array (uint64)."""
        np.save(Path(path), np.array(self._hashes, dtype=np.uint64))


def repeated_across(arrays: list[np.ndarray], max_ids_per_pass: int = 1 << 24) -> list[np.ndarray]:
    """Per unit (in unit order), the indexes of its records whose id hash appeared in an earlier unit, or
    earlier in the same one (a unit's own repeats were quarantined already, so these are across units, or
    hash collisions for the caller to rule out).

    ``arrays``: each unit's hashes in record order (``np.load(..., mmap_mode="r")`` keeps them on disk).
    Hashes are split into ``ceil(total / max_ids_per_pass)`` partitions by value; each pass sorts one.
    """
    starts = np.cumsum([0, *(len(a) for a in arrays)])
    passes = max(1, -(-int(starts[-1]) // max_ids_per_pass))
    later = [np.empty(0, np.int64)]
    for p in range(passes):
        picked = [np.flatnonzero(a % np.uint64(passes) == p) for a in arrays]
        hashes = np.concatenate(
            [np.empty(0, np.uint64)] + [a[m] for a, m in zip(arrays, picked, strict=True)]
        )
        where = np.concatenate(
            [np.empty(0, np.int64)] + [m + s for m, s in zip(picked, starts, strict=False)]
        )
        order = np.argsort(hashes, kind="stable")  # equal hashes keep unit order: the first is the original
        ranked = hashes[order]
        later.append(where[order[1:][ranked[1:] == ranked[:-1]]])
    found = np.sort(np.concatenate(later))
    unit = np.searchsorted(starts, found, side="right") - 1
    return [found[unit == u] - starts[u] for u in range(len(arrays))]
