"""Reading a filled review file (``review.csv`` or a Label Studio export) and joining it by id to the
``export.json`` that wrote it."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from omegaconf import DictConfig

from kun_hpc.quality.review.common import (
    BAD,
    EXAMPLES,
    EXPORT_NAME,
    GOOD,
    HUMAN,
    REVIEW_DIR,
    SET,
    ReviewError,
)

# what a person may write for each verdict (compared after stripping spaces and 【】, case-insensitively)
HUMAN_WORDS = {GOOD: ("好", "good", "1", "y", "yes"), BAD: ("差", "bad", "0", "n", "no")}
WORD_LABEL = {w: label for label, words in HUMAN_WORDS.items() for w in words}


@dataclass
class Reviewed:
    """One row of a filled review file: where it is, the record's ``id``, the person's verdict (``human``:
    好, 差 or None) and the export's mark it carries (``review_set``, "" when none); :func:`join_export`
    adds the stage's side from export.json. ``problem``: why it cannot be compared (None when it can):
    ``human_empty``, ``human_unknown`` (a word not in :data:`HUMAN_WORDS`), ``no_annotation``,
    ``cancelled``, ``tied`` (Label Studio annotations split evenly), ``not_in_export`` (an id the export did
    not draw), ``duplicate_id`` (an id an earlier row of the file has)."""

    where: str
    id: str
    human: str | None
    review_set: str = ""
    problem: str | None = None
    judge: str | None = None
    score: float | None = None
    reason: str = ""
    stratum: str = ""
    stratum_records: int | None = None
    stage: str = ""


def verdict_label(value: Any) -> str | None:
    """好 or 差 for what a person (or the export) wrote -- 好/good/1/y/yes, 差/bad/0/n/no, case and
    surrounding spaces and 【】 ignored -- else None."""
    return WORD_LABEL.get(str(value if value is not None else "").strip().strip("【】").strip().lower())


def _row(where: str, data: dict, human: Any, problem: str | None = None) -> Reviewed:
    """A :class:`Reviewed` from a row's fields (CSV columns, a Label Studio task's data or a JSON-MIN row,
    whose ``id`` is the task's: the record's is ``record_id`` there)."""
    label = verdict_label(human)
    if problem is None and label is None:
        problem = "human_empty" if not str(human if human is not None else "").strip() else "human_unknown"
    rid = data.get("record_id") if "record_id" in data else data.get("id")
    return Reviewed(where, str(rid if rid is not None else ""), label, str(data.get(SET) or ""), problem)


def read_csv_review(path: Path) -> tuple[list[Reviewed], str]:
    """The rows of a filled ``review.csv`` and the encoding read: UTF-8 (with or without a byte order mark),
    else GB18030 (what Excel on a Chinese Windows writes for "CSV" that is not "CSV UTF-8"). Rows are named
    as a spreadsheet numbers them (the header is row 1). Only ``id`` and ``human_verdict`` are read (the
    stage's side comes from export.json). Raises :class:`ReviewError` without those columns."""
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ReviewError(f"{path}: neither UTF-8 nor GB18030 text; save it as 'CSV UTF-8'")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"id", HUMAN} - set(reader.fieldnames or ())
    if missing:
        raise ReviewError(
            f"{path}: no column {', '.join(sorted(missing))} (its columns: "
            f"{', '.join(reader.fieldnames or [])}); import the review.csv that `kun-hpc review export` "
            "wrote, filled"
        )
    rows = [
        _row(f"{path.name} row {k} (id {r.get('id', '')})", r, r.get(HUMAN)) for k, r in enumerate(reader, 2)
    ]
    return rows, encoding


def _annotation_choice(annotation: dict) -> str | None:
    """The choice an annotation made in ``human_verdict`` (any choices control when none is so named)."""
    results = [r for r in annotation.get("result") or [] if r.get("type") == "choices"]
    named = [r for r in results if r.get("from_name") == HUMAN] or results
    for r in named:
        choices = (r.get("value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


def read_label_studio(path: Path) -> list[Reviewed]:
    """The tasks of a Label Studio JSON export (a list of tasks, each with ``data`` and ``annotations``,
    each annotation a ``result`` list whose ``choices`` item holds ``value.choices``).

    A task without annotations is ``no_annotation``; cancelled annotations (``was_cancelled``) are ignored,
    and a task with only those is ``cancelled``. Several annotations: the majority of their verdicts; an
    even split is ``tied`` (not compared: nobody decided). A flat row (Label Studio's JSON-MIN export:
    ``human_verdict`` beside the data's fields) is read like a CSV row. Raises :class:`ReviewError` for a
    file that is not such a list, naming the task."""
    try:
        tasks = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise ReviewError(f"{path}: not JSON ({e})") from None
    if not isinstance(tasks, list):
        raise ReviewError(
            f"{path}: not a Label Studio export (a JSON list of tasks); got {type(tasks).__name__}"
        )
    rows = []
    for k, task in enumerate(tasks, 1):
        if not isinstance(task, dict):
            raise ReviewError(f"{path}: task {k} is not a JSON object")
        data = task.get("data", task)
        if not isinstance(data, dict):
            raise ReviewError(f"{path}: task {k}: 'data' is not a JSON object")
        where = f"{path.name} task {task.get('id', k)} (id {data.get('record_id', '')})"
        if "data" not in task:
            if HUMAN not in task:
                raise ReviewError(f"{path}: task {k} has neither 'data' nor '{HUMAN}'")
            rows.append(_row(where, task, task.get(HUMAN)))
            continue
        annotations = task.get("annotations") or []
        live = [a for a in annotations if not a.get("was_cancelled")]
        if not annotations:
            rows.append(_row(where, data, None, "no_annotation"))
            continue
        if not live:
            rows.append(_row(where, data, None, "cancelled"))
            continue
        votes = Counter(label for a in live if (label := verdict_label(_annotation_choice(a))) is not None)
        if not votes:
            rows.append(_row(where, data, _annotation_choice(live[0])))
            continue
        (top, count), *rest = votes.most_common()
        tied = bool(rest) and rest[0][1] == count
        rows.append(_row(where, data, None if tied else top, "tied" if tied else None))
    return rows


def read_review(path: str | Path) -> tuple[list[Reviewed], str]:
    """A filled review file by its extension: ``.csv`` (:func:`read_csv_review`) or ``.json``
    (:func:`read_label_studio`); the rows and how the file was read."""
    path = Path(path)
    if not path.is_file():
        raise ReviewError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows, encoding = read_csv_review(path)
        return rows, f"CSV, {encoding}"
    if suffix == ".json":
        return read_label_studio(path), "Label Studio JSON"
    raise ReviewError(f"{path}: expected the filled review.csv or a Label Studio JSON export (.csv or .json)")


def load_export(cfg: DictConfig, path: str | Path | None = None) -> tuple[dict, Path]:
    """The export a filled file is joined to (written by :func:`export_review`) and its path: ``path``,
    default ``<run>/review/export.json``. Raises :class:`ReviewError` when it is missing, holds no drawn
    rows (an earlier kun-hpc's), or is the export of another run."""
    path = Path(path) if path is not None else Path(cfg.run.dir) / REVIEW_DIR / EXPORT_NAME
    if not path.is_file():
        raise ReviewError(
            f"{path}: no such file; the import reads the stage's side from the export that wrote the review "
            "file: run `kun-hpc review export RUN` first, or name its export.json with --export"
        )
    try:
        export = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise ReviewError(f"{path}: not JSON ({e})") from None
    if not isinstance(export, dict) or not isinstance(export.get("rows"), dict) or SET not in export:
        raise ReviewError(f"{path}: holds no drawn rows (written by an earlier kun-hpc?): export again")
    if export.get("run") != str(cfg.run.dir):
        raise ReviewError(f"{path}: the export of run {export.get('run')}, not of this run ({cfg.run.dir})")
    return export, path


def join_export(rows: list[Reviewed], export: dict, path: Path, export_path: Path) -> int:
    """Give each row of ``path`` the stage's side its id has in ``export`` (decision, score, reason,
    stratum and the stratum's size): a row whose id the export did not draw is ``not_in_export``, a repeat
    of an id ``duplicate_id``. Returns how many of the export's rows the file lacks. Raises
    :class:`ReviewError`, naming the file and the export it expected, when rows carry another export's
    ``review_set``, or when none of the file's ids is in the export (its first unknown ids named)."""
    expected = (
        f"this run's export {export_path} ({export['n']} records of the {export['stage']} stage, "
        f"{export['created']}, review set {export[SET]})"
    )
    others = sorted({r.review_set for r in rows if r.review_set and r.review_set != export[SET]})
    if others:
        raise ReviewError(
            f"{path}: written by another export (review set {', '.join(others)}), not by {expected}: "
            "import the file that export wrote, or export again"
        )
    drawn = export["rows"]
    unknown = [r.id for r in rows if r.id not in drawn]
    if rows and len(unknown) == len(rows):
        raise ReviewError(
            f"{path}: none of its {len(rows)} ids is in {expected}; the first unknown: "
            f"{', '.join(repr(i) for i in unknown[:EXAMPLES])}"
        )
    seen: set[str] = set()
    for r in rows:
        side = drawn.get(r.id)
        if side is None:
            r.problem = "not_in_export"
            continue
        if r.id in seen:
            r.problem = "duplicate_id"
        seen.add(r.id)
        r.judge, r.score, r.reason = side["judge_verdict"], side["score"], side["reason"]
        r.stratum, r.stage = side["stratum"], export["stage"]
        r.stratum_records = export["strata"][r.stratum]["records"]
    return len(drawn) - len(seen)
