"""The benchmark n-gram index: built once from the benchmark files, looked up for each record's texts.

**N-grams.** A text is normalised as the dedup normalises it (``dedup.normalize``:
:func:`~kun_hpc.merge.normalize.make_normalizer`, then :func:`~kun_hpc.merge.normalize.shingle_text`: width
folded, lower case, whitespace and punctuation gone), and its character ``ngram``-grams are hashed to 64
bits by :meth:`~kun_hpc.merge.minhash.MinHasher.shingles` (a polynomial over the code points and splitmix64:
vectorised, where one xxhash call per n-gram would dominate the run time from Python). 13 is the n-gram
size of GPT-3's contamination analysis (Brown et al. 2020, appendix C), counted here in characters.
**A benchmark text shorter than n characters (normalised) is not indexed**: a short answer such as ``北京``
or ``正确`` would otherwise make every record that mentions it contaminated. Such texts are counted
(``short``) and shown in the report; raise recall on short items by lowering ``ngram``.

**Index.** Every n-gram maps to the first (benchmark file, line, field) it came from, in the order the
files are named. It is built once, in the submitting process, into ``index.npy`` (a structured array
sorted by hash) and ``index.json`` (the files and their counts), and reused while its fingerprint -- the
sha256 of every benchmark file's bytes, ``jsonl_fields``, ``ngram`` and ``dedup.normalize`` -- is
unchanged. The phase's config hash covers the fingerprint, so changed benchmarks re-run the phase and every
pass after it.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from omegaconf import DictConfig, OmegaConf

from kun_hpc.config import config_hash
from kun_hpc.core.hashing import file_sha256
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.merge.decontaminate.benchmarks import CSV_FIELDS, benchmark_files, read_benchmark
from kun_hpc.merge.minhash import MinHasher
from kun_hpc.merge.normalize import make_normalizer, shingle_text

INDEX_VERSION = 1  # bump when the index's layout or meaning changes: old indexes are rebuilt
ENTRY = np.dtype([("key", "<u8"), ("file", "<u4"), ("line", "<u4"), ("field", "<u2")])


@dataclass
class Hit:
    """The first benchmark n-gram found in a text."""

    benchmark: str  # the benchmark file's name
    line: int
    benchmark_field: str  # question | answer | a JSONL field
    ngram: str  # the shared n-gram, as normalised (no whitespace or punctuation)


class NgramIndex:
    """The benchmark n-grams (sorted 64-bit hashes) with the first (file, line, field) of each."""

    def __init__(self, entries: np.ndarray, info: dict):
        self.keys = np.ascontiguousarray(entries["key"])
        self.entries, self.info = entries, info
        self.n = int(info["ngram"])
        self.normalize = make_normalizer(info["normalize"])
        self.hasher = MinHasher(self.n, 1)

    @classmethod
    def load(cls, folder: str | Path, fingerprint: str | None = None) -> NgramIndex:
        """The index saved in ``folder``; RuntimeError when its fingerprint is not ``fingerprint`` (rebuilt
        since the phase was planned)."""
        info = orjson.loads((Path(folder) / "index.json").read_bytes())
        if fingerprint is not None and info["fingerprint"] != fingerprint:
            raise RuntimeError(
                f"{folder}: the benchmark index was rebuilt ({info['fingerprint']}) since this merge was "
                f"planned ({fingerprint}): run the merge again"
            )
        return cls(np.load(Path(folder) / "index.npy"), info)

    def first_hits(self, texts: list[str]) -> list[Hit | None]:
        """For each text, its first n-gram (in reading order) found in the index, or None."""
        keys = [shingle_text(self.normalize(t)) for t in texts]
        which = [i for i, k in enumerate(keys) if len(k) >= self.n]
        out: list[Hit | None] = [None] * len(texts)
        if not which or not len(self.keys):
            return out
        h, offsets = self.hasher.shingles([keys[i] for i in which])
        pos = np.minimum(np.searchsorted(self.keys, h), len(self.keys) - 1)
        found = np.flatnonzero(self.keys[pos] == h)
        text_of = np.searchsorted(offsets, found, side="right") - 1
        firsts, at = np.unique(text_of, return_index=True)
        for t, k in zip(firsts.tolist(), found[at].tolist(), strict=True):
            e = self.entries[pos[k]]
            j = k - int(offsets[t])
            out[which[t]] = Hit(
                benchmark=self.info["files"][int(e["file"])]["name"],
                line=int(e["line"]),
                benchmark_field=self.info["fields"][int(e["field"])],
                ngram=keys[which[t]][j : j + self.n],
            )
        return out


def index_dir(cfg: DictConfig) -> Path:
    return Path(cfg.merge.output) / "decontaminate" / "_index"


def _fingerprint(files: list[tuple[Path, str]], fields: list[str], n: int, normalize: dict) -> str:
    shas = [[name, file_sha256(path)] for path, name in files]
    return config_hash(
        {"files": shas, "fields": fields, "ngram": n, "normalize": normalize, "version": INDEX_VERSION}
    )


def build_index(cfg: DictConfig) -> tuple[Path, str]:
    """Build (or reuse) the n-gram index of ``merge.decontaminate.benchmarks`` under :func:`index_dir`;
    its folder and fingerprint. Problems found in the benchmark rows are printed to stderr.

    Raises :class:`BenchmarkError` as :func:`benchmark_files` and :func:`read_benchmark` do."""
    dc = cfg.merge.decontaminate
    fields = [str(f) for f in dc.jsonl_fields]
    normalize = OmegaConf.to_container(cfg.dedup.normalize, resolve=True)
    files = benchmark_files([str(p) for p in dc.benchmarks])
    n = int(dc.ngram)
    fingerprint = _fingerprint(files, fields, n, normalize)
    folder = index_dir(cfg)
    try:
        if orjson.loads((folder / "index.json").read_bytes())["fingerprint"] == fingerprint:
            return folder, fingerprint
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError):
        pass
    norm = make_normalizer(normalize)
    all_fields = [*CSV_FIELDS, *(f for f in fields if f not in CSV_FIELDS)]
    reports, keys, meta = [], [], []
    for k, (path, name) in enumerate(files):
        report, rows = read_benchmark(path, name, fields)
        reports.append(report)
        for row in rows:
            for f, text in row.texts.items():
                key = shingle_text(norm(text))
                if not key:
                    continue
                report.texts += 1
                if len(key) < n:
                    report.short += 1
                    continue
                report.indexed += 1
                keys.append(key)
                meta.append((k, row.line, all_fields.index(f)))
    entries = _entries(keys, meta, n)
    for k, count in Counter(entries["file"].tolist()).items():
        reports[k].ngrams = count
    for r in reports:
        for m in r.messages:
            print(f"merge: decontaminate: skipped: {m}", file=sys.stderr)
        if sum(r.problems.values()) > len(r.messages):
            print(
                f"merge: decontaminate: {r.name}: {sum(r.problems.values()) - len(r.messages)} more "
                "problems (index.json)",
                file=sys.stderr,
            )
    info = {
        "fingerprint": fingerprint,
        "ngram": n,
        "normalize": normalize,
        "fields": all_fields,
        "ngrams": len(entries),
        "files": [r.to_dict() for r in reports],
    }
    buf = io.BytesIO()
    np.save(buf, entries)
    atomic_write_bytes(folder / "index.npy", buf.getvalue())
    atomic_write_bytes(folder / "index.json", orjson.dumps(info, option=orjson.OPT_INDENT_2))
    return folder, fingerprint


def _entries(keys: list[str], meta: list[tuple[int, int, int]], n: int) -> np.ndarray:
    """Index entries sorted by hash, one per distinct n-gram: its first (file, line, field)."""
    if not keys:
        return np.zeros(0, ENTRY)
    h, offsets = MinHasher(n, 1).shingles(keys)
    m = np.repeat(np.array(meta, dtype=np.int64), np.diff(offsets), axis=0)
    e = np.zeros(len(h), ENTRY)
    e["key"], e["file"], e["line"], e["field"] = h, m[:, 0], m[:, 1], m[:, 2]
    e = e[np.argsort(e["key"], kind="stable")]  # stable: a hash's first source stays first
    first = np.r_[True, e["key"][1:] != e["key"][:-1]]
    return e[first]
