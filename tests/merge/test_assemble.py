"""The dataset's rows (kun_hpc/merge/assemble.py) from hand-written last-stage records: the float columns
hold a float or null in JSONL and Parquet alike, ``meta`` and ``unit_text`` come through (issue 16)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kun_hpc.io.shards import ZstdJsonlWriter, read_shard
from kun_hpc.merge.assemble import AssembleTask, assemble_unit

UNIT = "长江是中国最长的河流，全长约六千三百公里。"
# (what a stage record holds as ppl, what the dataset holds): a number is a float, anything else null
PPL = [(12, 12.0), (3.25, 3.25), (None, None), ("7", None), (True, None), ("absent", None)]


def write_records(path: Path, records: list[dict]) -> None:
    w = ZstdJsonlWriter(path, 3)
    for r in records:
        w.write(r)
    w.close()


def outputs(out: Path) -> tuple[list[dict], pa.Table]:
    """The JSONL rows as parsed JSON, and the Parquet table, of the dataset's first shard."""
    rows = list(read_shard(out / "jsonl" / "part-00000.jsonl.zst"))
    return rows, pq.read_table(out / "parquet" / "part-00000.parquet")


@pytest.mark.parametrize("kind", ["pairs", "text"])
def test_ppl_is_a_float_or_null_in_jsonl_and_parquet(tmp_path, kind):
    records = []
    for i, (ppl, _) in enumerate(PPL):
        r = {"id": f"c/{i}", "corpus": "c", "text": UNIT, "instruction": "问", "answer": "答"}
        if ppl != "absent":
            r["ppl"] = ppl
        records.append(r)
    write_records(tmp_path / "in.jsonl.zst", records)
    assemble_unit(AssembleTask(kind, (str(tmp_path / "in.jsonl.zst"),), str(tmp_path / "ds"), 0, True, 3))
    raw, table = outputs(tmp_path / "ds")
    assert [r["ppl"] for r in raw] == [want for _, want in PPL]
    assert all(type(r["ppl"]) in (float, type(None)) for r in raw)
    assert table.schema.field("ppl").type == pa.float64()
    assert table.column("ppl").to_pylist() == [want for _, want in PPL]
    assert [r["score"] for r in raw] == [None] * len(PPL)


def test_meta_and_the_unit_text_are_columns(tmp_path):
    meta = {"title": "长江", "dataType": "百科", "uniqueKey": "k1", "views": 2**62}
    records = [
        {"id": "w/1", "corpus": "w", "text": UNIT, "meta": meta, "instruction": "问一", "answer": "答一"},
        {"id": "s/2", "corpus": "s", "text": UNIT + "又", "instruction": "问二", "answer": "答二"},
        {"id": "x/3", "corpus": "x", "instruction": "问三", "answer": "答三"},  # a custom stage dropped text
    ]
    write_records(tmp_path / "in.jsonl.zst", records)
    assemble_unit(AssembleTask("pairs", (str(tmp_path / "in.jsonl.zst"),), str(tmp_path / "ds"), 0, True, 3))
    raw, table = outputs(tmp_path / "ds")
    for rows in (raw, table.to_pylist()):
        assert [r["unit_text"] for r in rows] == [UNIT, UNIT + "又", None]
        assert [orjson.loads(r["meta"]) for r in rows] == [meta, {}, {}]
        assert [r["output"] for r in rows] == ["答一", "答二", "答三"]
