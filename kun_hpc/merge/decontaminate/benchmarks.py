"""Benchmark files: which files ``merge.decontaminate.benchmarks`` names, and the texts of each.

**Benchmark texts.** CSV files in the C-Eval layout (header ``id,question,A,B,C,D,answer[,explanation]``;
the test split has no ``answer``) or the CMMLU layout (``,Question,A,B,C,D,Answer``: first column unnamed),
told apart by the header (names compared case-insensitively); JSONL files with the string fields
``jsonl_fields``. From a CSV row the question and the *correct option's text* are indexed (the answer letter
picks the column A-D). The wrong options are not: a distractor seen in training data is not the benchmark's
answer, and an option alone is mostly a word or two that would match everywhere. The explanation is not
indexed either (C-Eval's dev split only).

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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

SUFFIXES = (".csv", ".jsonl")
CEVAL = ["id", "question", "a", "b", "c", "d"]  # + answer (+ explanation): C-Eval's val/dev; test: none
CMMLU = ["", "question", "a", "b", "c", "d", "answer"]
CSV_FIELDS = ("question", "answer")
SHOWN_PROBLEMS = 10  # bad benchmark rows printed (and kept in index.json) per file


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
