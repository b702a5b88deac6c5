"""Human agreement (issue 14, item 6): does the judge agree with people?

``kun-hpc review export RUN [--stage point|answer|dataset]`` writes a review set of ``-n`` records of one
stage: ``point`` (the judge: what it kept, verdict 好, and what it rejected: ``verdict_bad``,
``verdict_both``, ``verdict_unparseable``, ``score_below_threshold``, ...), ``answer`` (the Answer stage's
outputs and rejections) or ``dataset`` (the merged dataset: kept records only). A person marks each record
好 or 差 in ``review.csv`` (a spreadsheet) or in Label Studio (``label_studio_tasks.json`` +
``label_studio_config.xml``); ``kun-hpc review import RUN FILE`` reads the filled file back and measures the
stage's decision against the people's: confusion matrix, precision and recall of 【好】, accuracy, Cohen's
kappa, bootstrap intervals for kappa and precision and, when records carry a calibrated score, the lowest
``point.threshold`` that reaches a target precision. The result goes to ``<run>/review/agreement.json``;
:func:`section` puts it in the merge report and the dataset card.

The sample is stratified: a stratum is a corpus and the stage's decision (``kept``, or the reject reason),
so rare outcomes (a judge's unparseable answers) are reviewed as often as common ones. ``-n`` is shared
equally among the strata, a stratum smaller than its share gives the rest to the others (water-filling).
The export keeps the stage's side of each drawn record (its decision, score, reason, stratum and the
stratum's size ``N_h``) in its own record, ``export.json``, keyed by record id, with the state of the stage
it drew from; the reviewer's files carry only the ids and the texts to judge (the CSV also the stage's
columns, to hide while reviewing), so the review is blind. The import joins the filled file to
``export.json`` by id, refuses a file of another export, and weighs a reviewed row by ``N_h / m_h``
(``m_h``: the stratum's reviewed rows), so precision, recall, accuracy and kappa estimate the stage's whole
output, not the over-sampled rare strata (stratified sampling with a combined ratio estimate: Cochran,
*Sampling Techniques*, 3rd ed., 1977, ch. 5 and 6). The confusion matrix shows the reviewed rows as
counted, beside the records they stand for. :func:`section` compares the state the export drew from with
the run as it is now and says so when the agreement describes an earlier state.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import heapq
import io
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from omegaconf import DictConfig

from kun_hpc.cluster.funnel import stage_markers
from kun_hpc.cluster.phases import phase_markers
from kun_hpc.config import ConfigError, load_run
from kun_hpc.inspect_run import stage_files
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.layout import stage_dir, stage_key
from kun_hpc.io.shards import iter_shard_lines, list_shards
from kun_hpc.quality.cost import ASSEMBLE
from kun_hpc.quality.section import QualityContext, Section, Table

GOOD, BAD = "好", "差"
STAGES = ("point", "answer", "dataset")
KEPT = "kept"  # the stratum name of what the stage kept
REVIEW_DIR = "review"
CSV_NAME = "review.csv"
TASKS_NAME = "label_studio_tasks.json"
LS_CONFIG_NAME = "label_studio_config.xml"
EXPORT_NAME = "export.json"
AGREEMENT_NAME = "agreement.json"
HUMAN, NOTES = "human_verdict", "notes"  # the reviewer's columns (and Label Studio control names)
SET = "review_set"  # each row's mark of the export that wrote it (export.json's ``review_set``)
# the texts a reviewer may see, by stage, in the order shown; an export shows those its records hold (a
# text dataset: its text only). ``answer`` is the dataset's ``output``.
STAGE_FIELDS = {
    "point": ("instruction", "text"),
    "answer": ("instruction", "text", "answer"),
    "dataset": ("instruction", "answer", "text"),
}
TEXT_COLUMNS = ("instruction", "text", "answer")
# the stage's side of a row: in export.json (what the import reads) and, to hide while reviewing, at the
# end of the CSV; never in the Label Studio tasks (its Data Manager shows every data field as a column)
STAGE_COLUMNS = (
    "corpus", "stage", "judge_verdict", "score", "reason", "stratum", "stratum_records", "source",
)  # fmt: skip
# what a person may write for each verdict (compared after stripping spaces and 【】, case-insensitively)
HUMAN_WORDS = {GOOD: ("好", "good", "1", "y", "yes"), BAD: ("差", "bad", "0", "n", "no")}
WORD_LABEL = {w: label for label, words in HUMAN_WORDS.items() for w in words}
# a cell Excel would read as a formula (OWASP "CSV injection"): shown with a leading apostrophe
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
RESAMPLES, LEVEL, TARGET_PRECISION = 2000, 0.95, 0.9
EXAMPLES = 5  # rows named per kind of row that could not be compared
# The question the reviewer answers, by what the review shows. A fixed text, not read from the run's
# ``point.template``: "instruction" sums up the criteria of Kun's bundled judge prompt
# (configs/prompts/point.txt); the others ask about what the pair or the text is for.
GUIDE = {
    "instruction": "只评价指令。【好】（标准极严）：目标明确、信息完整、可行、逻辑清楚。"
    "【差】：含隐私信息（如人名）、模糊、信息缺失或错误、不切实际、冗余或涉及图片表格、逻辑混乱。",
    "pair_with_text": "评价指令和回答这一对。"
    "【好】：指令本身好，且回答切题、忠实于原文、通顺完整。否则【差】。",
    "pair": "评价指令和回答这一对。【好】：指令目标明确、可行，且回答切题、内容正确、通顺完整。否则【差】。",
    "text": "评价这段文本能否作为训练数据。【好】：内容完整、通顺、有信息量。"
    "【差】：乱码、广告或模板文字、残缺、含隐私信息、内容错误或无意义。",
}
LABELS = {  # how Label Studio titles each text ("text" shown without an instruction: a text dataset's)
    "instruction": "指令 instruction",
    "text": "原文 text (the unit the instruction was made from)",
    "answer": "回答 answer",
    "text_alone": "文本 text",
}


class ReviewError(ValueError):
    """A run, stage or review file that cannot be used; the message names the file, the row and why."""


# ------------------------------------------------------------------------------------------------ export
def run_config(run_dir: str | Path) -> DictConfig:
    """The run's saved config (``<run>/config.yaml``); :class:`ReviewError` when ``run_dir`` is no run."""
    if not (Path(run_dir) / "config.yaml").is_file():
        raise ReviewError(f"{run_dir}: not a run folder (no config.yaml in it)")
    return load_run(run_dir)


def _record(line: bytes, path: Path, line_no: int) -> dict:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ReviewError(f"{path}:{line_no}: not a JSON record ({e})") from None
    if not isinstance(row, dict):
        raise ReviewError(f"{path}:{line_no}: not a JSON object")
    return row


def require_stage(cfg: DictConfig, stage: str) -> None:
    """Raise :class:`ReviewError` naming the run's stages when ``stage`` is not one of them."""
    stages = [stage_key(s) for s in cfg.pipeline.stages]
    if stage not in stages:
        raise ReviewError(f"stage {stage!r} is not in this run; its stages: {', '.join(stages) or 'none'}")


def stage_lines(cfg: DictConfig, stage: str) -> Iterator[tuple[str, Path, int, bytes]]:
    """(stratum, file, 1-based line, line) of every record of ``stage``, files in path order.

    ``point`` / ``answer``: the stage's output shards (stratum ``<corpus>/kept``) and its rejected files
    (``<corpus>/<reason>``), the corpus being the folder; ``dataset``: the merged dataset's JSONL parts
    (``<corpus>/kept``, the corpus read from each record). Raises :class:`ReviewError` when the stage is not
    in the run or has no output yet.
    """
    if stage == "dataset":
        folder = Path(cfg.merge.output) / "dataset" / "jsonl"
        files = list_shards(folder)
        if not files:
            raise ReviewError(f"the run has no merged dataset yet ({folder} holds none): run `kun-hpc merge`")
        for path in files:
            for i, line in enumerate(iter_shard_lines(path), 1):
                yield f"{_record(line, path, i).get('corpus', '')}/{KEPT}", path, i, line
        return
    require_stage(cfg, stage)
    root = stage_dir(cfg, stage)
    if not root.is_dir():
        raise ReviewError(f"stage {stage!r} has no output yet ({root} does not exist): see `kun-hpc status`")
    for kind, base in ((KEPT, root), ("rejected", root / "rejected")):
        for path in stage_files(root, kind, None):
            corpus = path.relative_to(base).parts[0]
            for i, line in enumerate(iter_shard_lines(path), 1):
                why = (
                    KEPT if kind == KEPT else str(_record(line, path, i).get("reject", {}).get("reason", "?"))
                )
                yield f"{corpus}/{why}", path, i, line


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many of ``n`` draws each stratum gets: equal shares, capped by the stratum's size, what a small
    stratum cannot take shared again among the others (water-filling); the last draws that do not divide
    evenly go to the largest strata first (ties by name). Every stratum gets one when ``n`` allows."""
    alloc = dict.fromkeys(sizes, 0)
    left = min(n, sum(sizes.values()))
    while left > 0:
        open_ = sorted((s for s in sizes if alloc[s] < sizes[s]), key=lambda s: (-sizes[s], s))
        share = max(left // len(open_), 1)
        for s in open_:
            give = min(share, sizes[s] - alloc[s], left)
            alloc[s] += give
            left -= give
            if not left:
                break
    return alloc


@dataclass
class ReviewSet:
    """What :func:`export_review` wrote: the rows, the texts shown (``fields``), each stratum's size and
    draws, the export's mark (``review_set``) and the files."""

    stage: str
    rows: list[dict]
    sizes: dict[str, int]
    drawn: dict[str, int]
    fields: tuple[str, ...] = ()
    review_set: str = ""
    files: list[Path] = field(default_factory=list)


def draw(lines: Iterator[tuple[str, Path, int, bytes]], n: int, seed: int) -> tuple[dict, dict, dict]:
    """A stratified sample of ``n`` lines: (stratum -> chosen (file, line, bytes), stratum sizes, draws).

    One pass; each line gets a uniform random key from ``random.Random(seed)`` and each stratum keeps its
    ``n`` smallest keys (bottom-k sampling, a uniform sample without replacement whose first ``k`` are again
    uniform): memory holds at most ``n`` lines per stratum, whatever the stage's size. :func:`allocate` then
    says how many of each stratum's smallest keys are taken. The same files and seed give the same sample.
    """
    rng = random.Random(seed)
    heaps: dict[str, list[tuple[float, int, Path, int, bytes]]] = {}
    sizes: Counter[str] = Counter()
    for order, (stratum, path, i, line) in enumerate(lines):
        sizes[stratum] += 1
        key = rng.random()
        heap = heaps.setdefault(stratum, [])
        item = (-key, order, path, i, line)  # a max-heap on the key: its top is the first to go
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif key < -heap[0][0]:
            heapq.heapreplace(heap, item)
    drawn = allocate(dict(sizes), n)
    chosen = {s: [it[2:] for it in sorted(heaps[s], key=lambda t: -t[0])[: drawn[s]]] for s in heaps}
    return chosen, dict(sorted(sizes.items())), dict(sorted(drawn.items()))


def review_row(record: dict, stage: str, stratum: str, size: int, source: str) -> dict:
    """One review row of a stage's record: ``id``, the texts (:data:`TEXT_COLUMNS`, None where the record
    has no such field; ``answer`` is the dataset's ``output`` at ``dataset``), the reviewer's empty
    ``human_verdict`` and ``notes``, and the stage's side (:data:`STAGE_COLUMNS`): ``judge_verdict`` is 好
    when the stage kept the record, 差 when it rejected it (``reason`` says why)."""
    reject = record.get("reject") or {}
    score = record.get("score")
    named = {"answer": "output" if stage == "dataset" else "answer"}
    texts = {c: record.get(named.get(c, c)) for c in TEXT_COLUMNS}
    return {
        "id": str(record.get("id", "")),
        **{c: None if v is None else str(v) for c, v in texts.items()},
        HUMAN: "",
        NOTES: "",
        "corpus": str(record.get("corpus") or stratum.split("/")[0]),
        "stage": stage,
        "judge_verdict": BAD if reject else GOOD,
        "score": score if isinstance(score, (int, float)) else None,
        "reason": str(reject.get("reason", "")),
        "stratum": stratum,
        "stratum_records": size,
        "source": source,
    }


def stage_state(cfg: DictConfig, stage: str) -> dict:
    """What a review of ``stage`` draws from, as the run's markers tell it (no pass over the records):
    ``records`` (each done unit's shards' kept plus rejected records; the merged dataset's rows, from the
    merge-assemble markers, for ``dataset``), ``units`` (markers read) and ``fingerprint``: the first 16 hex
    digits of a sha256 over every output shard's content hash (``sha256`` in its marker) and counts. A stage
    or merge that wrote other records or other counts changes it; a re-run that wrote the same records does
    not. Raises :class:`ReviewError` when ``stage`` is not in the run."""
    if stage == "dataset":
        markers = phase_markers(cfg.run.dir, ASSEMBLE)
        parts = sorted([s["output"], s.get("sha256", ""), s["rows"]] for m in markers for s in m["shards"])
        records = sum(p[2] for p in parts)
    else:
        require_stage(cfg, stage)
        markers = {s: m for s, m, _ in stage_markers(cfg)}.get(stage, [])
        parts = sorted(
            [m["unit"], s.get("sha256", ""), s["out"], sorted(s["rejected"].items())]
            for m in markers
            for s in m.get("shards", [])
        )
        records = sum(p[2] + sum(n for _, n in p[3]) for p in parts)
    digest = hashlib.sha256(orjson.dumps(parts)).hexdigest()[:16]
    return {"stage": stage, "records": records, "units": len(markers), "fingerprint": digest}


def shown_fields(stage: str, rows: list[dict]) -> tuple[str, ...]:
    """The texts a review of ``stage`` shows (:data:`STAGE_FIELDS`): those the drawn records hold, so a
    pairs dataset shows instruction and answer, a text dataset its text alone."""
    return (
        tuple(f for f in STAGE_FIELDS[stage] if any(r[f] is not None for r in rows))
        or STAGE_FIELDS[stage][:1]
    )


def guide(fields: tuple[str, ...] | list[str]) -> str:
    """The question (:data:`GUIDE`) for a review showing ``fields``: the pair, with the unit it must be
    faithful to when shown; the instruction alone; or the text alone."""
    if "answer" in fields:
        return GUIDE["pair_with_text" if "text" in fields else "pair"]
    return GUIDE["instruction" if "instruction" in fields else "text"]


def export_review(
    run_dir: str | Path,
    stage: str = "point",
    n: int = 200,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
) -> ReviewSet:
    """Write the review set of ``stage`` (one of :data:`STAGES`) into ``out`` (default ``<run>/review``):
    ``review.csv``, ``label_studio_tasks.json``, ``label_studio_config.xml`` and ``export.json``: the stage,
    seed, run, ``review_set`` (a mark every row of the reviewer's files carries), the texts shown
    (``fields``), each stratum's size and draws, the stage's :func:`stage_state` and, keyed by record id,
    each drawn record's side (decision, score, reason, stratum, corpus, source), which the import reads.

    Cost: one pass over the stage's shards (kept and rejected; the dataset's parts for ``dataset``), parsing
    the rejected lines (and the dataset's) for their reason or corpus, holding at most ``n`` lines per
    stratum. Rows are shuffled (seeded) so a row's place does not tell the stage's decision. Raises
    :class:`ReviewError` for a bad run or stage, an empty stage, a record id drawn twice (the import joins by
    id), and a ``review.csv`` already in ``out`` (a reviewer may be filling it) unless ``force``.
    """
    if stage not in STAGES:
        raise ReviewError(f"--stage must be one of {', '.join(STAGES)} (got {stage!r})")
    if n < 1:
        raise ReviewError(f"-n must be >= 1 (got {n})")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REVIEW_DIR
    if (run_dir / "config.yaml").is_file() and (out / CSV_NAME).exists() and not force:
        raise ReviewError(
            f"{out / CSV_NAME} exists (a reviewer may be filling it): pass --force to replace it, or --out"
        )
    cfg = run_config(run_dir)
    chosen, sizes, drawn = draw(stage_lines(cfg, stage), n, seed)
    if not sizes:
        raise ReviewError(f"stage {stage!r} has no records (kept or rejected): nothing to review")
    rows, base, where = [], Path(cfg.run.dir), {}
    for stratum, picks in chosen.items():
        for path, i, line in picks:
            source = f"{path.relative_to(base) if path.is_relative_to(base) else path}:{i}"
            row = review_row(_record(line, path, i), stage, stratum, sizes[stratum], source)
            if row["id"] in where:
                raise ReviewError(
                    f"{source}: record id {row['id']!r} is also at {where[row['id']]}: a review is joined "
                    "back by id, so the stage's ids must be unique"
                )
            where[row["id"]] = source
            rows.append(row)
    random.Random(seed).shuffle(rows)
    fields, created = shown_fields(stage, rows), _now()
    mark = uuid.uuid4().hex[:12]  # each export its own, even of the same sample in the same second
    for r in rows:
        r[SET] = mark
    manifest = {
        "stage": stage, SET: mark, "run": str(base), "n": len(rows), "seed": seed, "created": created,
        "fields": list(fields), "state": stage_state(cfg, stage),
        "strata": {s: {"records": sizes[s], "drawn": drawn[s]} for s in sizes},
        "rows": {r["id"]: {c: r[c] for c in STAGE_COLUMNS if c not in ("stage", "stratum_records")}
                 for r in rows},
    }  # fmt: skip
    result = ReviewSet(stage, rows, sizes, drawn, fields, mark)
    result.files = [out / CSV_NAME, out / TASKS_NAME, out / LS_CONFIG_NAME, out / EXPORT_NAME]
    # export.json first: files of an earlier export in ``out`` carry its mark, which the import refuses
    atomic_write_bytes(out / EXPORT_NAME, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    atomic_write_bytes(out / CSV_NAME, csv_bytes(rows, fields))
    atomic_write_bytes(out / TASKS_NAME, label_studio_tasks(rows, fields))
    atomic_write_bytes(out / LS_CONFIG_NAME, label_studio_config(fields).encode())
    return result


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _cell(column: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if column in TEXT_COLUMNS and text.startswith(FORMULA_START):
        return "'" + text
    return text


def csv_columns(fields: tuple[str, ...] | list[str] = TEXT_COLUMNS) -> tuple[str, ...]:
    """The CSV's columns: ``id``, the texts shown, the reviewer's ``human_verdict`` and ``notes``, the
    export's mark, then the stage's side (:data:`STAGE_COLUMNS`: hide those while reviewing; the import
    reads the stage's side from export.json, never from these cells)."""
    return ("id", *fields, HUMAN, NOTES, SET, *STAGE_COLUMNS)


def csv_bytes(rows: list[dict], fields: tuple[str, ...] | list[str] = TEXT_COLUMNS) -> bytes:
    """The rows as CSV (:func:`csv_columns`), UTF-8 with a byte order mark: Excel then opens Chinese text
    correctly (without it, Excel guesses the legacy code page). A text cell that Excel would evaluate as a
    formula (starting with ``= + - @``) gets a leading apostrophe; the import reads no text column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    columns = csv_columns(fields)
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(c, r.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8-sig")


def label_studio_tasks(rows: list[dict], fields: tuple[str, ...] | list[str] = TEXT_COLUMNS) -> bytes:
    """Label Studio's import format: a JSON list of ``{"data": {...}}`` tasks holding only the record's id
    (``record_id``: Label Studio's own exports put the task's ``id`` beside the data's fields), the
    export's mark and the texts shown. Label Studio's Data Manager shows every data field as a column, so
    the stage's side stays out of the tasks (it is in export.json): the review is blind."""
    tasks = [
        {"data": {"record_id": r["id"], SET: r.get(SET, ""), **{f: r.get(f) or "" for f in fields}}}
        for r in rows
    ]
    return orjson.dumps(tasks, option=orjson.OPT_INDENT_2)


def label_studio_config(fields: tuple[str, ...] | list[str]) -> str:
    """A Label Studio labeling config: the question for ``fields`` (:func:`guide`), each of ``fields``
    (texts of :data:`TEXT_COLUMNS`, in order) under a title, a single choice ``human_verdict`` (好 / 差) and
    a free-text ``notes``, both on the first field."""
    target = fields[0]
    parts = [f'  <Header value="{guide(fields)}"/>']
    for name in fields:
        title = LABELS["text_alone" if name == "text" and "instruction" not in fields else name]
        parts += [f'  <Header value="{title}" size="5"/>', f'  <Text name="{name}" value="${name}"/>']
    parts += [
        f'  <Choices name="{HUMAN}" toName="{target}" choice="single-radio" showInline="true" '
        'required="true">',
        f'    <Choice value="{GOOD}"/>',
        f'    <Choice value="{BAD}"/>',
        "  </Choices>",
        f'  <TextArea name="{NOTES}" toName="{target}" placeholder="notes" rows="2" maxSubmissions="1"/>',
    ]
    return "<View>\n" + "\n".join(parts) + "\n</View>\n"


# ------------------------------------------------------------------------------------------------ import
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


def cohen_kappa(tp: float, fp: float, fn: float, tn: float) -> float | None:
    """Cohen's kappa of a 2x2 table (judge 好/差 by human 好/差, counts or weights): ``(p_o - p_e) / (1 -
    p_e)``, ``p_o`` the share of agreement, ``p_e`` the agreement expected by chance from the two margins
    (Cohen 1960, "A coefficient of agreement for nominal scales"). None when undefined (``p_e`` = 1: both
    raters gave one same verdict to every record, or no records)."""
    n = tp + fp + fn + tn
    if n <= 0:
        return None
    p_o = (tp + tn) / n
    p_e = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    return None if p_e >= 1 - 1e-12 else (p_o - p_e) / (1 - p_e)


def agreement_stats(judge: np.ndarray, human: np.ndarray, weight: np.ndarray | None = None) -> dict:
    """The judge against the humans, 好 the positive class. ``judge``, ``human``: bool arrays (True = 好)
    of one shape; ``weight``: what each row stands for (default 1). Returns the table ``tp`` (judge 好,
    human 好), ``fp`` (judge 好, human 差), ``fn`` (judge 差, human 好), ``tn``, and ``precision``
    (tp / (tp + fp)), ``recall`` (tp / (tp + fn)), ``accuracy`` and ``kappa`` (:func:`cohen_kappa`); a ratio
    with nothing to divide by is None."""
    w = np.ones(len(judge)) if weight is None else np.asarray(weight, dtype=float)
    j, h = np.asarray(judge, dtype=bool), np.asarray(human, dtype=bool)
    tp, fp = float(w[j & h].sum()), float(w[j & ~h].sum())
    fn, tn = float(w[~j & h].sum()), float(w[~j & ~h].sum())

    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn), "kappa": cohen_kappa(tp, fp, fn, tn),
    }  # fmt: skip


def stratum_weights(strata: list[str], sizes: list[int | None]) -> np.ndarray | None:
    """``N_h / m_h`` per row (``N_h``: the stratum's records in the stage, ``m_h``: its rows here), so each
    stratum stands for its share of the stage; None (unweighted) when any row lacks its stratum or size."""
    if not strata or any(not s for s in strata) or any(n is None for n in sizes):
        return None
    m = Counter(strata)
    return np.array([n / m[s] for s, n in zip(strata, sizes, strict=True)], dtype=float)


def bootstrap_intervals(
    judge: np.ndarray,
    human: np.ndarray,
    weight: np.ndarray | None = None,
    strata: list[str] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """Percentile bootstrap intervals of :func:`cohen_kappa` and of the precision of 好 (Efron & Tibshirani,
    *An Introduction to the Bootstrap*, 1993, ch. 13): ``resamples`` resamples of the rows with
    replacement, within each stratum when ``strata`` are given (the sample was drawn per stratum), from
    ``numpy.random.default_rng(seed)``; each interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the resampled values. Resamples where a statistic is undefined are left out and counted.
    Returns ``kappa`` and ``precision``, each ``{"low", "high", "undefined"}`` (``low``, ``high`` None
    when every resample is undefined), and ``resamples``, ``seed``, ``level``, ``method``."""
    j, h = np.asarray(judge, dtype=bool), np.asarray(human, dtype=bool)
    w = np.ones(len(j)) if weight is None else np.asarray(weight, dtype=float)
    rng = np.random.default_rng(seed)
    labels = np.asarray(strata) if strata is not None else np.zeros(len(j), dtype=int)
    groups = [np.flatnonzero(labels == s) for s in np.unique(labels)]
    # each resample draws every stratum's rows with replacement, as many as it has: (resamples, rows)
    idx = np.concatenate(
        [g[rng.integers(0, len(g), (resamples, len(g)))] for g in groups] or [np.zeros((resamples, 0), int)],
        axis=1,
    )
    jj, hh, ww = j[idx], h[idx], w[idx]
    tp, fp = (ww * (jj & hh)).sum(1), (ww * (jj & ~hh)).sum(1)
    fn, tn = (ww * (~jj & hh)).sum(1), (ww * (~jj & ~hh)).sum(1)
    kappas = np.array(
        [k if (k := cohen_kappa(*c)) is not None else np.nan for c in zip(tp, fp, fn, tn, strict=True)]
    )
    kept = tp + fp
    precisions = np.divide(tp, kept, out=np.full(len(kept), np.nan), where=kept > 0)

    def interval(values: np.ndarray) -> dict:
        ok = values[~np.isnan(values)]
        lo, hi = (None, None) if not len(ok) else (
            float(q) for q in np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
        )  # fmt: skip
        return {"low": lo, "high": hi, "undefined": int(len(values) - len(ok))}

    method = "percentile, stratified" if strata is not None else "percentile"
    return {"kappa": interval(kappas), "precision": interval(precisions), "resamples": resamples,
            "seed": seed, "level": level, "method": method}  # fmt: skip


def lowest_threshold(
    scores: np.ndarray, human: np.ndarray, target: float, weight: np.ndarray | None = None
) -> dict | None:
    """The lowest threshold ``t`` among the scores whose precision -- the (weighted) share of human 好 among
    the records scoring ``>= t``, as the calibrated Point keeps ``score >= point.threshold`` -- reaches
    ``target``. Returns ``threshold``, ``precision``, ``recall`` (human 好 kept at ``t`` / all human 好),
    ``kept`` (share of the records kept at ``t``) and ``n`` (rows scoring ``>= t``); None when no threshold
    reaches the target."""
    s = np.asarray(scores, dtype=float)
    h = np.asarray(human, dtype=bool)
    w = np.ones(len(s)) if weight is None else np.asarray(weight, dtype=float)
    if not len(s):
        return None
    order = np.argsort(-s, kind="stable")
    s, h, w = s[order], h[order], w[order]
    kept_w, good_w = np.cumsum(w), np.cumsum(w * h)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last row of each run of equal scores
    precision = good_w[last] / kept_w[last]
    hits = np.flatnonzero(precision >= target - 1e-12)
    if not len(hits):
        return None
    k = last[hits[-1]]  # scores descend: the last hit is the lowest threshold
    total_good = good_w[-1]
    return {
        "threshold": float(s[k]), "precision": float(precision[hits[-1]]),
        "recall": float(good_w[k] / total_good) if total_good > 0 else None,
        "kept": float(kept_w[k] / kept_w[-1]), "n": int(k + 1),
    }  # fmt: skip


def measure(
    rows: list[Reviewed], target: float = TARGET_PRECISION, resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """Everything ``review import`` reports about ``rows`` joined to their export (see
    :func:`import_review`), without files."""
    ok = [r for r in rows if r.problem is None]
    problems = Counter(r.problem for r in rows if r.problem is not None)
    examples: dict[str, list[str]] = {}
    for r in rows:
        if r.problem is not None and len(examples.setdefault(r.problem, [])) < EXAMPLES:
            examples[r.problem].append(r.where)
    judge = np.array([r.judge == GOOD for r in ok], dtype=bool)
    human = np.array([r.human == GOOD for r in ok], dtype=bool)
    strata = [r.stratum for r in ok]
    uncompared = sorted({r.stratum for r in rows if r.stratum} - set(strata))
    weight = stratum_weights(strata, [r.stratum_records for r in ok])
    counted = agreement_stats(judge, human)
    stats = agreement_stats(judge, human, weight)
    boot = bootstrap_intervals(judge, human, weight, strata if weight is not None else None, resamples, seed)
    by_reason: dict[str, dict[str, int]] = {}
    for r in ok:
        d = by_reason.setdefault(r.reason or KEPT, {"n": 0, "human_good": 0})
        d["n"] += 1
        d["human_good"] += r.human == GOOD
    scored = [r for r in ok if r.score is not None]
    threshold = None
    if scored:
        ws = stratum_weights([r.stratum for r in scored], [r.stratum_records for r in scored])
        threshold = lowest_threshold(
            np.array([r.score for r in scored]), np.array([r.human == GOOD for r in scored]), target, ws
        )
    return {
        "rows": len(rows),
        "n": len(ok),
        "not_compared": dict(sorted(problems.items())),
        "examples": examples,
        "strata_not_compared": uncompared,
        "weighted": weight is not None,
        "confusion": {k: int(counted[k]) for k in ("tp", "fp", "fn", "tn")},
        "confusion_records": {k: stats[k] for k in ("tp", "fp", "fn", "tn")} if weight is not None else None,
        **{k: stats[k] for k in ("precision", "recall", "accuracy", "kappa")},
        "kappa_ci": [boot["kappa"]["low"], boot["kappa"]["high"]],
        "precision_ci": [boot["precision"]["low"], boot["precision"]["high"]],
        "bootstrap": {k: boot[k] for k in ("resamples", "seed", "level", "method")}
        | {"undefined": {k: boot[k]["undefined"] for k in ("kappa", "precision")}},
        "by_reason": dict(sorted(by_reason.items())),
        "scored": len(scored),
        "target_precision": target,
        "threshold": threshold,
    }


def import_review(
    run_dir: str | Path,
    path: str | Path,
    target: float = TARGET_PRECISION,
    resamples: int = RESAMPLES,
    seed: int = 0,
    export: str | Path | None = None,
) -> dict:
    """Read a filled review file (:func:`read_review`), join it by id to the run's export
    (:func:`load_export`: ``export`` or ``<run>/review/export.json``; :func:`join_export`), measure the
    stage's decisions against the humans' (:func:`measure`) and write the result to
    ``<run>/review/agreement.json``, with the file, the run's ``point.mode`` and ``point.threshold``, the
    time, ``stage``, ``export`` (the export's stage, mark, seed, time, texts shown, strata and
    :func:`stage_state`: what :func:`section` compares with the run later) and ``not_in_file`` (the
    export's rows the file lacks). Rows that cannot be compared are counted by kind (``not_compared``) with
    the first few named (``examples``). Raises :class:`ReviewError` for a bad run, file, row, export or
    ``target``, for a file of another export, and for a file without a single comparable row (the last
    agreement.json is kept then)."""
    if not 0 < target <= 1:
        raise ReviewError(f"--target-precision must be in (0, 1] (got {target})")
    if resamples < 1:
        raise ReviewError(f"--resamples must be >= 1 (got {resamples})")
    path, run_dir = Path(path), Path(run_dir)
    rows, how = read_review(path)  # a bad file is named before the run's config is loaded (seconds)
    cfg = run_config(run_dir)
    drawn, export_path = load_export(cfg, export)
    missing = join_export(rows, drawn, path, export_path)
    if not any(r.problem is None for r in rows):
        why = ", ".join(f"{k} {v}" for k, v in sorted(Counter(r.problem for r in rows).items()))
        raise ReviewError(f"{path}: no row has a person's verdict, nothing to compare ({why or 'no rows'})")
    keys = ("stage", SET, "n", "seed", "created", "fields", "strata", "state")
    result = {
        "file": str(path.resolve()),
        "read_as": how,
        "created": _now(),
        "point_mode": str(cfg.point.mode),
        "point_threshold": float(cfg.point.threshold),
        "stage": drawn["stage"],
        "export": {"file": export_path.name, **{k: drawn[k] for k in keys}},
        "not_in_file": missing,
        **measure(rows, target, resamples, seed),
    }
    atomic_write_bytes(
        run_dir / REVIEW_DIR / AGREEMENT_NAME, orjson.dumps(result, option=orjson.OPT_INDENT_2)
    )
    return result


# ---------------------------------------------------------------------------------------------- reading
def _num(v: float | None, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, "n/a" for None; a value that rounds to zero is "0.00", never
    "-0.00"."""
    if v is None:
        return "n/a"
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _interval(ci: list, level: float, digits: int = 3, word: str = "interval", sep: str = " to ") -> str:
    return "n/a" if ci[0] is None else f"{level:.0%} {word} {_num(ci[0], digits)}{sep}{_num(ci[1], digits)}"


def kappa_says_nothing(result: dict) -> bool:
    """Whether kappa is meaningless for ``result``: a ``dataset`` review (every record was kept), or the
    stage made one decision on every compared row (kappa is then 0 or undefined by construction)."""
    c = result["confusion"]
    return result["stage"] == "dataset" or c["tp"] + c["fp"] == 0 or c["fn"] + c["tn"] == 0


def threshold_sentence(result: dict) -> str | None:
    """The suggested ``point.threshold`` override, or why there is none; None without scored rows."""
    if not result["scored"]:
        return None
    t, target = result["threshold"], result["target_precision"]
    if t is None:
        return (
            f"No threshold reaches a precision of {target:g} on the {result['scored']} scored rows: keep "
            "more records judged, or accept a lower target (--target-precision)."
        )
    stage_note = ""
    if result["stage"] != "point":
        stage_note = (
            " (these rows passed the run's threshold already: only the point stage's review, which holds "
            "rejected records too, can suggest a lower one)"
        )
    return (
        f"Lowest threshold with precision >= {target:g}: `point.threshold={t['threshold']:g}` (precision "
        f"{_num(t['precision'])}, keeps {t['kept']:.1%} of the records and {_num(t['recall'])} of the "
        f"humans' 好; {t['n']} reviewed rows at or above it; the run used {result['point_threshold']:g})"
        f"{stage_note}."
    )


def summary_lines(result: dict) -> list[str]:
    """The agreement in short Markdown lines (the report's and the command's summary). At ``dataset`` it
    leads with the precision of 好 and its interval, and leaves kappa out (see :func:`kappa_says_nothing`)."""
    b, level = result["bootstrap"], result["bootstrap"]["level"]
    export = result["export"]
    weighted = (
        "estimates for the stage's whole output (each stratum weighed by its records / its reviewed rows)"
        if result["weighted"]
        else "unweighted (the rows are taken as a uniform sample)"
    )
    precision = f"{_num(result['precision'])} ({_interval(result['precision_ci'], level)})"
    lines = [
        f"{result['n']} of {result['rows']} reviewed rows compared ({result['stage']} stage; "
        f"{Path(result['file']).name}, {result['created']}; export of {export['created']}, review set "
        f"{export[SET]}).",
    ]
    if result["stage"] == "dataset":
        lines.append(
            f"Precision of 【好】 (the share of the dataset's records people call good) {precision}; "
            f"{weighted}. Every record of the dataset was kept: recall, accuracy and kappa say nothing here."
        )
    else:
        lines.append(
            f"Precision of 【好】 {precision}, recall {_num(result['recall'])}, accuracy "
            f"{_num(result['accuracy'])}, Cohen's kappa {_num(result['kappa'])} "
            f"({_interval(result['kappa_ci'], level)}); {weighted}."
        )
    undefined = ", ".join(f"{v} with {k} undefined" for k, v in b["undefined"].items() if v)
    lines.append(
        f"Intervals: {b['method']} bootstrap, {b['resamples']} resamples, seed {b['seed']}"
        + (f" ({undefined})" if undefined else "")
        + "."
    )
    if result["not_compared"]:
        ex = result["examples"]
        lines.append(
            "Not compared: "
            + ", ".join(f"{k} {v} (e.g. {ex[k][0]})" for k, v in result["not_compared"].items())
            + "."
        )
    if result["not_in_file"]:
        lines.append(f"The file lacks {result['not_in_file']} of the export's {export['n']} rows.")
    if result["strata_not_compared"]:
        lines.append(
            f"No compared row in the strata {', '.join(result['strata_not_compared'])}: the estimates leave "
            "their records out."
        )
    if result["n"] and result["stage"] != "dataset" and kappa_says_nothing(result):
        lines.append(
            "The stage made one decision on every compared row: only its precision (or its miss rate) "
            "says something; kappa is 0 or undefined by construction."
        )
    sentence = threshold_sentence(result)
    if sentence:
        lines.append(sentence)
    return lines


def confusion_table(result: dict) -> Table:
    """Judge 好 / 差 by human 好 / 差: reviewed rows, and the records they stand for when weighted."""
    c, est = result["confusion"], result["confusion_records"]

    def cell(k: str) -> str:
        return f"{c[k]:,}" + (f" (≈{est[k]:,.0f} records)" if est else "")

    return Table(
        ["", "human 好", "human 差"],
        [["judge 好 (kept)", cell("tp"), cell("fp")], ["judge 差 (rejected)", cell("fn"), cell("tn")]],
        "Confusion matrix (reviewed rows)",
    )


def reason_table(result: dict) -> Table:
    rows = [[k, f"{v['n']:,}", f"{v['human_good']:,}", f"{v['human_good'] / v['n']:.0%}"]
            for k, v in result["by_reason"].items()]  # fmt: skip
    return Table(
        ["stage's decision", "reviewed", "human 好", "share"], rows, "Humans' 好 by the stage's decision"
    )


def staleness(cfg: DictConfig, result: dict) -> str | None:
    """None when the stage (or merged dataset) a review was exported from is as the export found it
    (:func:`stage_state`: same fingerprint); else what changed since, in words."""
    then = result["export"]["state"]
    stage = then["stage"]
    try:
        now = stage_state(cfg, stage)
    except ReviewError as e:
        return str(e)
    if now["fingerprint"] == then["fingerprint"]:
        return None
    what = "the merged dataset" if stage == "dataset" else f"the {stage} stage's output"
    counts = (
        f"{then['records']:,} records then and now, not the same"
        if now["records"] == then["records"]
        else f"{then['records']:,} records then, {now['records']:,} now"
    )
    return f"{what} changed since the export of {result['export']['created']} ({counts})"


def section(ctx: QualityContext) -> Section | None:
    """The "Human agreement" section: ``<run>/review/agreement.json`` (written by ``kun-hpc review
    import``) as the confusion matrix, the humans' 好 by the stage's decision, precision / recall / kappa
    with their intervals and the suggested threshold; None when no review was imported. When the stage the
    review was exported from changed since (:func:`staleness`), the section and the card line say the
    agreement was reviewed on an earlier state of the dataset (``data["current"]`` False)."""
    path = ctx.run_dir / REVIEW_DIR / AGREEMENT_NAME
    if not path.is_file():
        return None
    result = orjson.loads(path.read_bytes())
    data = {**result, "file": Path(result["file"]).name}  # no local paths in the report
    if "export" not in result:
        line = (
            f"`review/{AGREEMENT_NAME}` was written by an earlier kun-hpc and does not record what it was "
            "reviewed on: run `kun-hpc review import` again to show it."
        )
        return Section("human_agreement", "Human agreement", {**data, "current": None}, [line])
    stale = staleness(ctx.cfg, result)
    data |= {"current": stale is None, "stale": stale}
    level = result["bootstrap"]["level"]
    precision = f"precision of 【好】 {_num(result['precision'], 2)}"
    if result["precision_ci"][0] is not None:
        precision += f" ({_interval(result['precision_ci'], level, 2, 'CI', '–')})"
    if kappa_says_nothing(result):
        body = precision + (" (the share of the dataset's records people call good)"
                            if result["stage"] == "dataset" else "")  # fmt: skip
    else:
        kappa = f"Cohen's kappa {_num(result['kappa'], 2)}"
        if result["kappa_ci"][0] is not None:
            kappa += f" ({_interval(result['kappa_ci'], level, 2, 'CI', '–')})"
        body = f"{kappa}, {precision}"
    head = f"Human agreement ({result['stage']} stage, n = {result['n']})"
    lines = summary_lines(result)
    if stale:
        head += f", reviewed on an earlier state of the dataset ({stale})"
        lines.insert(
            0,
            f"**Reviewed on an earlier state of the dataset**: {stale}. The numbers below describe the "
            "records as they were then, not the dataset as it is now: export and review again "
            "(`kun-hpc review export`).",
        )
    return Section(
        "human_agreement", "Human agreement", data, lines,
        [confusion_table(result), reason_table(result)], card=[f"{head}: {body}."],
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- CLI
HELP = "a review set for people to judge, and the judge measured against their verdicts"


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("review", help=HELP, description=HELP)
    rs = r.add_subparsers(dest="review_command", required=True)
    e = rs.add_parser("export", help="write review.csv and Label Studio files of a stratified sample")
    e.add_argument("run", metavar="RUN", help="a run folder (holds config.yaml)")
    e.add_argument("--stage", choices=STAGES, default="point", help="what to review (default point)")
    e.add_argument("-n", type=int, default=200, help="how many records (default 200)")
    e.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    e.add_argument("--out", help=f"the folder to write (default RUN/{REVIEW_DIR})")
    e.add_argument("--force", action="store_true", help=f"replace an existing {CSV_NAME}")
    i = rs.add_parser("import", help="the judge against the humans' verdicts of a filled review file")
    i.add_argument("run", metavar="RUN", help="a run folder (holds config.yaml)")
    i.add_argument("file", metavar="FILE", help=f"the filled {CSV_NAME}, or Label Studio's JSON export")
    why = f"calibrated mode: the precision the suggested threshold reaches (default {TARGET_PRECISION})"
    i.add_argument("--target-precision", type=float, default=TARGET_PRECISION, help=why)
    i.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples ({RESAMPLES})")
    i.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    i.add_argument(
        "--export", help=f"the {EXPORT_NAME} that wrote FILE (default RUN/{REVIEW_DIR}/{EXPORT_NAME})"
    )


def _print_export(result: ReviewSet, run_dir: str | Path) -> None:
    from rich.table import Table as RichTable

    from kun_hpc.core.console import console

    out = console()
    table = RichTable(title=f"review set: {len(result.rows)} records of stage {result.stage}")
    for col in ("stratum (corpus/decision)", "records", "drawn"):
        table.add_column(col, justify="left" if col.startswith("stratum") else "right")
    for s, size in result.sizes.items():
        table.add_row(s, f"{size:,}", f"{result.drawn[s]:,}")
    out.print(table)
    folder = result.files[0].parent
    default = folder.resolve() == (Path(run_dir) / REVIEW_DIR).resolve()
    export = "" if default else f" --export {folder / EXPORT_NAME}"
    print(
        f"kun-hpc review: wrote {', '.join(p.name for p in result.files)} in {folder} (review set "
        f"{result.review_set}, showing {', '.join(result.fields)}); fill {HUMAN} (好 or 差) in the CSV or "
        "label the tasks in Label Studio (docs/commands.md#review), then "
        f"`kun-hpc review import RUN FILE{export}`",
        file=sys.stderr,
    )


def _print_import(result: dict, run_dir: Path) -> None:
    from rich.markup import escape
    from rich.table import Table as RichTable

    from kun_hpc.core.console import console

    out = console()
    for t in (confusion_table(result), reason_table(result)):
        table = RichTable(title=t.title)
        for h in t.header:
            table.add_column(h, justify="left" if h in ("", "stage's decision") else "right")
        for row in t.rows:
            table.add_row(*row)
        out.print(table)
    for line in summary_lines(result):
        out.print(escape(line.replace("`", "")))
    print(
        f"kun-hpc review: wrote {run_dir / REVIEW_DIR / AGREEMENT_NAME}; the next `kun-hpc merge {run_dir}` "
        "puts it in the report and the card (cheap: the merge's finished phases are not redone)",
        file=sys.stderr,
    )


def main(ns: argparse.Namespace) -> int:
    try:
        if ns.review_command == "export":
            _print_export(export_review(ns.run, ns.stage, ns.n, ns.seed, ns.out, ns.force), ns.run)
        else:
            result = import_review(ns.run, ns.file, ns.target_precision, ns.resamples, ns.seed, ns.export)
            _print_import(result, Path(ns.run))
    except (ReviewError, ConfigError) as e:
        print(f"kun-hpc review: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an unreadable file or a folder it cannot write: a message, not a traceback
        print(f"kun-hpc review: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0
