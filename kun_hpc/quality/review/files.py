"""The reviewer's files: which texts a review shows, the question it asks (:data:`GUIDE`), ``review.csv``
and Label Studio's tasks and labeling config."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

from kun_hpc.quality.review.common import BAD, GOOD, HUMAN, NOTES, SET, STAGE_COLUMNS, TEXT_COLUMNS

# the texts a reviewer may see, by stage, in the order shown; an export shows those its records hold (a
# text dataset: its text only). ``answer`` is the dataset's ``output``.
STAGE_FIELDS = {
    "point": ("instruction", "text"),
    "answer": ("instruction", "text", "answer"),
    "dataset": ("instruction", "answer", "text"),
}
# a cell Excel would read as a formula (OWASP "CSV injection"): shown with a leading apostrophe
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
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
