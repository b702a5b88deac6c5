"""Decontamination against benchmarks (issue 14, item 5): records sharing a character n-gram with a
benchmark question or answer are rejected as ``contaminated`` before the final dedup.

::

    merge.decontaminate.benchmarks (CSV: C-Eval / CMMLU layout, JSONL: merge.decontaminate.jsonl_fields)
      --build_index (submitting process, once per benchmark content)--> <merge.output>/decontaminate/_index/
    last stage's shards --merge-decontaminate (array, per shard group)--> <merge.output>/decontaminate/
      kept records at the input's relative path; rejected/ (reason contaminated), quarantine/ beside

**Benchmark texts.** CSV files in the C-Eval layout (header ``id,question,A,B,C,D,answer[,explanation]``;
the test split has no ``answer``) or the CMMLU layout (``,Question,A,B,C,D,Answer``: first column unnamed),
told apart by the header (names compared case-insensitively); JSONL files with the string fields
``jsonl_fields``. From a CSV row the question and the *correct option's text* are indexed (the answer letter
picks the column A-D). The wrong options are not: a distractor seen in training data is not the benchmark's
answer, and an option alone is mostly a word or two that would match everywhere. The explanation is not
indexed either (C-Eval's dev split only).

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

**Names.** A benchmark file is named as the user named it: a file by its name, a file found in a folder or
by a glob by its path from that folder's (the glob's fixed part's) parent: ``cmmlu/test/agronomy.csv``.
Positions are lines of the file (a CSV row's first line; the header is line 1).

**Bad benchmark input.** A named path that finds no .csv/.jsonl file, an unreadable or non-UTF-8 file, a
CSV header of neither layout, a malformed CSV, or a file from which no text could be read stop the merge
with :class:`BenchmarkError` naming the file, line and reason. Single bad rows are skipped and counted by
reason, the first few printed: ``columns`` (a CSV row with another number of cells than its header),
``answer_letter`` (the answer is not A-D: the question is still indexed), ``invalid_json``, ``not_object``,
``missing_field`` (a JSONL line lacking a string value for a field: its other fields are still indexed).
"""

from __future__ import annotations

import csv
import glob
import io
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from omegaconf import DictConfig, OmegaConf

from kun_hpc.cluster.phases import Phase, PhaseUnit
from kun_hpc.config import config_hash
from kun_hpc.core.counts import Counts, add_stats
from kun_hpc.core.hashing import file_sha256
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.quarantine import Bad
from kun_hpc.io.shards import FilteredShard
from kun_hpc.merge.dedup.job import shard_records
from kun_hpc.merge.minhash import MinHasher
from kun_hpc.merge.normalize import make_normalizer, shingle_text

PHASE = "merge-decontaminate"
REASON = "contaminated"
SUFFIXES = (".csv", ".jsonl")
INDEX_VERSION = 1  # bump when the index's layout or meaning changes: old indexes are rebuilt
ENTRY = np.dtype([("key", "<u8"), ("file", "<u4"), ("line", "<u4"), ("field", "<u2")])
CEVAL = ["id", "question", "a", "b", "c", "d"]  # + answer (+ explanation): C-Eval's val/dev; test: none
CMMLU = ["", "question", "a", "b", "c", "d", "answer"]
CSV_FIELDS = ("question", "answer")
SHOWN_PROBLEMS = 10  # bad benchmark rows printed (and kept in index.json) per file
BATCH_CHARS = 1 << 20  # record characters hashed at once (the shingle arrays take ~50 bytes per character)


class BenchmarkError(RuntimeError):
    """A benchmark file that cannot be used: the message names the file, the line and the reason."""


@dataclass
class Row:
    line: int  # where the row starts in its file (1-based; a CSV header is line 1)
    texts: dict[str, str]  # field -> text (CSV: question, answer)


@dataclass
class FileReport:
    """One benchmark file: what was read, indexed and skipped."""

    name: str
    layout: str = ""  # C-Eval | CMMLU | JSONL
    rows: int = 0  # rows that gave at least one text
    texts: int = 0  # non-empty texts of those rows
    indexed: int = 0  # texts of at least n characters (normalised)
    short: int = 0  # texts shorter than n: not indexed
    ngrams: int = 0  # distinct n-grams this file is the first source of
    problems: Counter = field(default_factory=Counter)  # skipped rows / fields by reason
    messages: list[str] = field(default_factory=list)  # the first SHOWN_PROBLEMS of them

    def problem(self, line: int, reason: str, detail: str) -> None:
        self.problems[reason] += 1
        if len(self.messages) < SHOWN_PROBLEMS:
            self.messages.append(f"{self.name} line {line}: {reason}: {detail}")

    def to_dict(self) -> dict:
        return {**self.__dict__, "problems": dict(self.problems)}


# ---------------------------------------------------------------------------------------- benchmark files
def _magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def benchmark_files(patterns: list[str]) -> list[tuple[Path, str]]:
    """``(path, name)`` of every benchmark file named by ``patterns`` (files, folders searched recursively
    for .csv/.jsonl, globs), in the order named, each file once; ``name`` is the path from the named
    folder's (or the glob's fixed part's) parent, a named file's own name.

    Raises :class:`BenchmarkError` for a path that finds nothing, a named file of another format, or two
    files that would get the same name."""
    out: dict[Path, str] = {}
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            base = p.parent
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise BenchmarkError(f"merge.decontaminate.benchmarks: {pattern}: not a .csv or .jsonl file")
            found, base = [p], p.parent
        elif _magic(pattern):
            base = Path(*_fixed_parts(p.parts)).parent
            found = sorted(
                Path(m)
                for m in glob.glob(str(p), recursive=True)
                if Path(m).is_file() and Path(m).suffix.lower() in SUFFIXES
            )
        else:
            raise BenchmarkError(f"merge.decontaminate.benchmarks: {pattern}: no such file or folder")
        if not found:
            raise BenchmarkError(f"merge.decontaminate.benchmarks: {pattern}: finds no .csv or .jsonl file")
        for f in found:
            out.setdefault(f.resolve(), f.relative_to(base).as_posix())
    names = Counter(out.values())
    twice = [n for n, c in names.items() if c > 1]
    if twice:
        paths = [str(p) for p, n in out.items() if n == twice[0]]
        raise BenchmarkError(
            f"merge.decontaminate.benchmarks: two files would both be named {twice[0]!r} "
            f"({', '.join(paths)}): name the folders that hold them instead"
        )
    return list(out.items())


def _fixed_parts(parts: tuple[str, ...]) -> list[str]:
    """The leading path parts of a glob without wildcards (``/b/ceval/*/x.csv`` -> ``/ b ceval``)."""
    fixed = []
    for part in parts:
        if _magic(part):
            break
        fixed.append(part)
    return fixed


def read_benchmark(path: Path, name: str, fields: list[str]) -> tuple[FileReport, list[Row]]:
    """The rows of one benchmark file (CSV by its header, JSONL by ``fields``) and its report.

    Raises :class:`BenchmarkError` when the file cannot be read, is not UTF-8, has a CSV header of neither
    layout or a malformed CSV record, or gives no text at all."""
    report = FileReport(name)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BenchmarkError(f"benchmark {name} ({path}): cannot be read: {e.strerror}") from None
    if path.suffix.lower() == ".csv":
        rows = list(_csv_rows(data, report))
    else:
        report.layout = "JSONL"
        rows = list(_jsonl_rows(data, report, fields))
    if not rows:
        why = "; ".join(report.messages[:3]) or "the file has no rows"
        raise BenchmarkError(f"benchmark {name} ({path}): no text read from it: {why}")
    report.rows = len(rows)
    return report, rows


def _csv_rows(data: bytes, report: FileReport) -> Iterator[Row]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BenchmarkError(f"benchmark {report.name} line {line}: not UTF-8 text ({e.reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # a stray quote must not eat rows
    start = 1  # the line the record being read starts on
    try:
        header = next(reader, None)
        if header is None:
            raise BenchmarkError(f"benchmark {report.name}: empty file (no CSV header)")
        cols = [h.strip().lower() for h in header]
        if cols[:6] == CEVAL and cols[6:] in ([], ["answer"], ["answer", "explanation"]):
            report.layout = "C-Eval"
        elif cols == CMMLU:
            report.layout = "CMMLU"
        else:
            raise BenchmarkError(
                f"benchmark {report.name} line 1: unknown CSV header {','.join(header)!r}: expected the "
                "C-Eval layout (id,question,A,B,C,D,answer[,explanation]) or the CMMLU layout "
                "(,Question,A,B,C,D,Answer)"
            )
        where = {c: i for i, c in enumerate(cols)}
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells:  # a blank line
                continue
            if len(cells) != len(cols):
                report.problem(line, "columns", f"{len(cells)} cells, the header has {len(cols)}")
                continue
            texts = {"question": cells[where["question"]]}
            if "answer" in where:
                letter = cells[where["answer"]].strip().upper()
                if len(letter) == 1 and letter in "ABCD":
                    texts["answer"] = cells[where[letter.lower()]]
                else:
                    report.problem(line, "answer_letter", f"answer {letter!r} is not one of A, B, C, D")
            yield Row(line, texts)
    except csv.Error as e:
        raise BenchmarkError(f"benchmark {report.name} line {start}: malformed CSV: {e}") from None


def _jsonl_rows(data: bytes, report: FileReport, fields: list[str]) -> Iterator[Row]:
    data = data.removeprefix(b"\xef\xbb\xbf")
    for line_no, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            report.problem(line_no, "invalid_json", str(e))
            continue
        if not isinstance(obj, dict):
            report.problem(line_no, "not_object", f"a JSON {type(obj).__name__}, not an object")
            continue
        texts = {f: obj[f] for f in fields if isinstance(obj.get(f), str)}
        missing = [f for f in fields if f not in texts]
        if missing:
            what = ", ".join(repr(f) for f in missing)
            report.problem(line_no, "missing_field", f"no string {what} (merge.decontaminate.jsonl_fields)")
        if texts:
            yield Row(line_no, texts)


# ------------------------------------------------------------------------------------------------- index
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


# ------------------------------------------------------------------------------------------------- phase
@dataclass(frozen=True)
class DecontaminateTask:
    """One unit of the phase: a group of shards (picklable)."""

    kind: str  # pairs | text
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    rejected: tuple[str, ...]
    quarantine: tuple[str, ...]
    index: str  # folder of index.npy / index.json
    fingerprint: str
    zstd_level: int


def record_fields(kind: str) -> tuple[str, ...]:
    """The fields of a record checked for benchmark n-grams, in the order they are checked."""
    return ("instruction", "answer") if kind == "pairs" else ("text",)


def decontaminate_phase(
    cfg: DictConfig, kind: str, shards: list[Path], root: Path, upstream: str
) -> tuple[Phase, list[Path], Path, str]:
    """The ``merge-decontaminate`` phase over ``shards`` (under ``root``; the benchmark index is built
    first), the shards it writes, their root, and the hash of what made them (for the passes after it).

    Raises :class:`BenchmarkError` for benchmark files that cannot be used."""
    folder, fingerprint = build_index(cfg)
    out = Path(cfg.merge.output) / "decontaminate"
    rel = [p.relative_to(root) for p in shards]
    outputs = [out / r for r in rel]
    spt = cfg.dedup.shards_per_task
    level = int(cfg.merge.zstd_level)
    h = config_hash(
        {
            "index": fingerprint,
            "upstream": upstream,
            "kind": kind,
            "zstd_level": level,
            "inputs": [str(s) for s in shards],
        }
    )

    def task(i: int) -> DecontaminateTask:
        part = rel[i : i + spt]
        return DecontaminateTask(
            kind=kind,
            inputs=tuple(str(s) for s in shards[i : i + spt]),
            outputs=tuple(str(out / r) for r in part),
            rejected=tuple(str(out / "rejected" / r) for r in part),
            quarantine=tuple(str(out / "quarantine" / r) for r in part),
            index=str(folder),
            fingerprint=fingerprint,
            zstd_level=level,
        )

    fn = "kun_hpc.merge.decontaminate:decontaminate_unit"
    run_dir = str(cfg.run.dir)
    units = [PhaseUnit(PHASE, g, fn, task(i), run_dir, h) for g, i in enumerate(range(0, len(shards), spt))]
    return (
        Phase(PHASE, units),
        outputs,
        out,
        config_hash({"decontaminate": fingerprint, "upstream": upstream}),
    )


def decontaminate_unit(task: DecontaminateTask) -> dict:
    """Each shard of the group: clean records to its output, contaminated ones to its rejected file (with
    ``reject``: stage, reason, detail, benchmark, line, benchmark_field, field, ngram), unreadable lines to
    quarantine. Marker: in, out, rejected, quarantined, per benchmark file (``benchmarks``) and per shard."""
    index = NgramIndex.load(task.index, task.fingerprint)
    fields = record_fields(task.kind)
    reports, total = [], Counts()
    for s, path in enumerate(task.inputs):
        counts = Counts()
        per_bench: dict[str, dict] = {}
        with FilteredShard(task.outputs[s], task.rejected[s], task.quarantine[s], task.zstd_level) as files:
            out, rej, bad = files.kept, files.rejected, files.quarantine
            for batch in _batches(path, fields):
                texts = [_text(r, f) for r, _ in batch for f in fields]
                hits = index.first_hits(texts)
                for k, (rec, line) in enumerate(batch):
                    counts.in_ += 1
                    if type(rec) is Bad:
                        counts.quarantined[rec.reason] += 1
                        bad.write(rec.to_dict())
                        continue
                    mine = hits[k * len(fields) : (k + 1) * len(fields)]
                    j = next((j for j, hit in enumerate(mine) if hit is not None), None)
                    if j is None:
                        counts.out += 1
                        out.write_line(line if line.endswith(b"\n") else line + b"\n")
                        continue
                    hit = mine[j]
                    counts.rejected[REASON] += 1
                    rej.write({**rec, "reject": _reject(hit, fields[j], index.n)})
                    b = per_bench.setdefault(
                        hit.benchmark, {"rejected": 0, "fields": {}, "benchmark_fields": {}}
                    )
                    b["rejected"] += 1
                    b["fields"][fields[j]] = b["fields"].get(fields[j], 0) + 1
                    b["benchmark_fields"][hit.benchmark_field] = (
                        b["benchmark_fields"].get(hit.benchmark_field, 0) + 1
                    )
            info = files.close()
        counts.check(task.outputs[s])
        reports.append(
            {
                "input": path,
                "output": task.outputs[s],
                "sha256": info.sha256,
                "bytes": info.bytes,
                **counts.to_dict(),
                "benchmarks": per_bench,
            }
        )
        total += counts
    benchmarks: dict = {}
    for r in reports:
        benchmarks = add_stats(benchmarks, r["benchmarks"])
    return {
        "stage": PHASE,
        **total.to_dict(),
        "benchmarks": benchmarks,
        "index": task.fingerprint,
        "shards": reports,
    }


def _batches(path: str, fields: tuple[str, ...]) -> Iterator[list[tuple[dict | Bad, bytes]]]:
    """(record or Bad, raw line) of a shard in batches of about :data:`BATCH_CHARS` checked characters."""
    batch: list[tuple[dict | Bad, bytes]] = []
    chars = 0
    for _, rec, line in shard_records(path):
        batch.append((rec, line))
        if type(rec) is not Bad:
            chars += sum(len(_text(rec, f)) for f in fields)
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _text(rec: dict | Bad, name: str) -> str:
    value = rec.get(name) if type(rec) is dict else None
    return value if isinstance(value, str) else ""


def _reject(hit: Hit, where: str, n: int) -> dict:
    detail = (
        f"its {where} shares the {n}-gram {hit.ngram!r} with the {hit.benchmark_field} at "
        f"{hit.benchmark} line {hit.line}"
    )
    return {
        "stage": PHASE,
        "reason": REASON,
        "detail": detail,
        "benchmark": hit.benchmark,
        "line": hit.line,
        "benchmark_field": hit.benchmark_field,
        "field": where,
        "ngram": hit.ngram,
    }
