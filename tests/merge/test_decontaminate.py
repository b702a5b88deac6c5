"""Decontamination against benchmarks (issue 14, item 5): benchmark files in the C-Eval and CMMLU CSV
layouts and JSONL, built here; planted questions and answers found with their file and line, nothing else
rejected; a text dataset; broken benchmark files; a whole merge with the phase's accounting and markers."""

from __future__ import annotations

import csv
import functools
from collections import Counter
from pathlib import Path

import orjson
import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.executors import InlineExecutor
from kun_hpc.cluster.phases import is_phase_done, run_phases
from kun_hpc.io.shards import ZstdJsonlWriter, list_shards, read_shard
from kun_hpc.merge.assemble import find_inputs
from kun_hpc.merge.decontaminate import (
    PHASE,
    BenchmarkError,
    NgramIndex,
    build_index,
    decontaminate_phase,
    index_dir,
)
from kun_hpc.merge.normalize import make_normalizer, shingle_text
from kun_hpc.quality.decontamination import phase_markers, section
from kun_hpc.quality.section import QualityContext
from kun_hpc.run import merge_dataset as run_merge
from tests.conftest import sample_overrides

CEVAL_HEADER = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
CMMLU_HEADER = ["", "Question", "A", "B", "C", "D", "Answer"]
Q1 = "下列关于中国古代四大发明的说法中，哪一项是正确的？"  # 23 characters once normalised
L2 = "在一个孤立系统中，熵总是随时间增加或者保持不变"  # a long correct option (C-Eval row 2, answer B)
L3 = "光合作用把光能转化为储存在有机物中的化学能"  # a long correct option (CMMLU row 1, answer D)
W3 = "呼吸作用把有机物中的化学能全部转化为热能散失"  # a long *wrong* option of the same row
Q4 = "请写出从地球到月球的平均距离以及光走完这段距离所需的时间"  # a JSONL question


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def benchmarks(root: Path) -> list[str]:
    """A C-Eval folder, a CMMLU file and a JSONL glob; what each line holds is known by construction."""
    write_csv(root / "ceval" / "val" / "physics_val.csv", CEVAL_HEADER, [
        ["0", Q1, "造纸术", "火药", "指南针", "印刷术", "C", "解释"],  # line 2
        ["1", "关于熵的说法正确的是", "熵可以减少", L2, "熵恒为零", "不确定", "B", ""],  # line 3
    ])  # fmt: skip
    write_csv(root / "cmmlu" / "agronomy.csv", CMMLU_HEADER, [
        ["0", "光合作用", "甲", "乙", W3, L3, "D"],  # line 2: the question is short, not indexed
        ["1", "中国的首都是", "北京", "上海", "广州", "深圳", "A"],  # line 3: "北京" is short, not indexed
    ])  # fmt: skip
    write_jsonl(root / "jsonl" / "extra.jsonl", [
        orjson.dumps({"question": "你好", "answer": "世界"}),  # line 1: both short
        b"",  # a blank line still counts as a line
        orjson.dumps({"question": Q4, "answer": "约38万公里，约1.3秒"}),  # line 3
    ])  # fmt: skip
    return [str(root / "ceval"), str(root / "cmmlu" / "agronomy.csv"), str(root / "jsonl" / "*.jsonl")]


def make_cfg(tmp_path: Path, patterns: list[str], *extra: str):
    benchmarks = f"merge.decontaminate.benchmarks=[{','.join(patterns)}]"
    return config.load(None, [f"run.dir={tmp_path / 'run'}", benchmarks, *extra])


@functools.cache
def normalizer():
    return make_normalizer(config.load().dedup.normalize)


def ngrams(text: str, n: int = 13) -> set[str]:
    """Brute force: the character n-grams of a text as the phase normalises it."""
    s = shingle_text(normalizer()(text))
    return {s[i : i + n] for i in range(len(s) - n + 1)}


# ----------------------------------------------------------------------------------------------- index
def test_planted_questions_and_answers_are_found_with_file_and_line(tmp_path):
    folder, fingerprint = build_index(make_cfg(tmp_path, benchmarks(tmp_path)))
    index = NgramIndex.load(folder, fingerprint)
    texts = {
        "question": "请回答：下列关于中国古代四大发明的说法中（哪一项是正确的）",  # Q1, other punctuation
        "option": "我们知道，光合作用把光能转化为储存在有机物中的化学能。",  # L3 inside
        "jsonl": "题目：请写出从地球到月球的平均距离，以及光走完这段距离所需的时间。",
        "ceval answer": "热力学告诉我们在一个孤立系统中熵总是随时间增加",  # 19 characters of L2
        "12 of Q1": "他问下列关于中国古代四大发明",  # 12 characters of Q1 (a 13th would match)
        "13 of Q1": "他问下列关于中国古代四大发明的",
        "short phrases": "北京是中国的首都。光合作用很重要。你好，世界！熵可以减少。",
        "wrong option": W3,
        "empty": "",
    }
    hits = dict(zip(texts, index.first_hits(list(texts.values())), strict=True))
    found = {k: (h.benchmark, h.line, h.benchmark_field) for k, h in hits.items() if h is not None}
    assert found == {
        "question": ("ceval/val/physics_val.csv", 2, "question"),
        "option": ("agronomy.csv", 2, "answer"),
        "jsonl": ("jsonl/extra.jsonl", 3, "question"),
        "ceval answer": ("ceval/val/physics_val.csv", 3, "answer"),
        "13 of Q1": ("ceval/val/physics_val.csv", 2, "question"),
    }
    assert hits["question"].ngram == "下列关于中国古代四大发明的"  # the first shared 13-gram, normalised
    assert hits["13 of Q1"].ngram == "下列关于中国古代四大发明的"
    info = orjson.loads((folder / "index.json").read_bytes())
    files = {f["name"]: f for f in info["files"]}
    # texts >= 13 characters: Q1, L2 | L3 | Q4; short: the other questions and options
    assert {k: (f["layout"], f["rows"], f["indexed"], f["short"]) for k, f in files.items()} == {
        "ceval/val/physics_val.csv": ("C-Eval", 2, 2, 2),
        "agronomy.csv": ("CMMLU", 2, 1, 3),
        "jsonl/extra.jsonl": ("JSONL", 2, 1, 3),
    }
    distinct = ngrams(Q1) | ngrams(L2) | ngrams(L3) | ngrams(Q4)
    assert info["ngrams"] == len(distinct)


def test_the_index_is_reused_until_a_benchmark_changes(tmp_path):
    patterns = benchmarks(tmp_path)
    cfg = make_cfg(tmp_path, patterns)
    folder, first = build_index(cfg)
    stamp = (folder / "index.npy").stat().st_mtime_ns
    assert build_index(cfg) == (folder, first) and (folder / "index.npy").stat().st_mtime_ns == stamp
    assert build_index(make_cfg(tmp_path, patterns, "merge.decontaminate.ngram=8"))[1] != first
    extra = tmp_path / "jsonl" / "extra.jsonl"
    extra.write_bytes(
        extra.read_bytes() + orjson.dumps({"question": "新加的一道足够长的题目文本在这里"}) + b"\n"
    )
    folder, changed = build_index(cfg)
    assert changed != first
    assert NgramIndex.load(folder, changed).first_hits(["新加的一道足够长的题目文本在这里"])[0].line == 4


# ---------------------------------------------------------------------------------------- bad benchmarks
BROKEN = {
    "header.csv": (b"q,a,b\n1,2,3\n", "header.csv line 1: unknown CSV header 'q,a,b'"),
    "latin1.csv": (b",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n1,\xe9t\xe9,a,b,c,d,A\n",
                   "latin1.csv line 3: not UTF-8 text"),
    "empty.csv": (b"", "empty.csv: empty file (no CSV header)"),
    "fields.jsonl": (b'{"prompt": "x"}\n{"prompt": "y"}\n',
                     "fields.jsonl (", "no text read from it: fields.jsonl line 1: missing_field"),
    "quote.csv": (b'id,question,A,B,C,D\n0,q,a,b,c,d\n1,"unclosed,a,b,c,d\n2,q,a,b,c,d\n',
                  "quote.csv line 3: malformed CSV"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_benchmark_file_that_cannot_be_used_stops_with_file_line_and_reason(tmp_path, name):
    data, *expected = BROKEN[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(BenchmarkError) as e:
        build_index(make_cfg(tmp_path, [str(tmp_path / name)]))
    for part in expected:
        assert part in str(e.value)


def test_paths_that_name_no_benchmark_stop_with_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    for folder in ("a", "b"):
        write_csv(tmp_path / folder / "test" / "same.csv", CEVAL_HEADER[:6], [["0", Q1, "a", "b", "c", "d"]])
    cases = {
        str(tmp_path / "nowhere.csv"): "nowhere.csv: no such file or folder",
        str(tmp_path / "empty"): "empty: finds no .csv or .jsonl file",
        str(tmp_path / "*.tsv"): "*.tsv: finds no .csv or .jsonl file",
        str(tmp_path / "x.parquet"): "x.parquet: not a .csv or .jsonl file",
        f"{tmp_path / 'a' / 'test'},{tmp_path / 'b' / 'test'}": "both be named 'test/same.csv'",
    }
    for pattern, message in cases.items():
        with pytest.raises(BenchmarkError, match=r"merge\.decontaminate\.benchmarks") as e:
            build_index(make_cfg(tmp_path, [pattern]))
        assert message in str(e.value)


def test_bad_rows_are_skipped_counted_and_named(tmp_path, capsys):
    path = write_csv(tmp_path / "mixed.csv", CMMLU_HEADER, [
        ["0", Q1, "a", "b", "c", "d", "E"],  # line 2: answer letter E: the question is still indexed
        ["1", "q", "a", "b"],  # line 3: 4 cells
        ["2", Q4, "a", "b", "c", "d", "a"],  # line 4: a lower-case letter is fine
    ])  # fmt: skip
    lines = [
        orjson.dumps({"question": L2}),
        b"{not json",
        b"[1, 2]",
        orjson.dumps({"question": L3, "answer": 7}),
    ]
    jsonl = write_jsonl(tmp_path / "mixed.jsonl", lines)
    folder, fingerprint = build_index(make_cfg(tmp_path, [str(path), str(jsonl)]))
    files = {f["name"]: f for f in orjson.loads((folder / "index.json").read_bytes())["files"]}
    assert files["mixed.csv"]["problems"] == {"answer_letter": 1, "columns": 1}
    assert files["mixed.csv"]["rows"] == 2
    # line 1: no "answer" field; line 4: answer 7 is not a string: both missing_field, questions indexed
    assert files["mixed.jsonl"]["problems"] == {"missing_field": 2, "invalid_json": 1, "not_object": 1}
    err = capsys.readouterr().err
    for message in ("mixed.csv line 2: answer_letter: answer 'E'", "mixed.csv line 3: columns: 4 cells",
                    "mixed.jsonl line 2: invalid_json", "mixed.jsonl line 3: not_object",
                    "mixed.jsonl line 4: missing_field: no string 'answer'"):  # fmt: skip
        assert message in err
    index = NgramIndex.load(folder, fingerprint)
    found = [(h.benchmark, h.line) for h in index.first_hits([Q1, Q4, L2, L3])]
    assert found == [("mixed.csv", 2), ("mixed.csv", 4), ("mixed.jsonl", 1), ("mixed.jsonl", 4)]


# -------------------------------------------------------------------------------------- the phase, text
def write_shard(path: Path, lines: list[bytes]) -> Path:
    w = ZstdJsonlWriter(path)
    for line in lines:
        w.write_line(line + b"\n")
    w.close()
    return path


def test_a_text_dataset_is_decontaminated_by_text_and_resumes(tmp_path):
    cfg = make_cfg(tmp_path, benchmarks(tmp_path), "dedup.shards_per_task=1")
    root = tmp_path / "in"
    records = [
        {"id": "a", "corpus": "c1", "text": "一段文字。" + L3 + "。后面还有别的话。"},  # contaminated (L3)
        {"id": "b", "corpus": "c1", "text": "光合作用很重要，北京是中国的首都。"},  # short phrases only
        {"id": "c", "corpus": "c2", "text": Q1, "instruction": "无关的指令"},  # a text record: its text
        {"id": "d", "corpus": "c2", "instruction": Q1, "text": "与基准无关的一段文字，足够长。"},
    ]
    shards = [
        write_shard(root / "c1" / "part-00000.jsonl.zst", [orjson.dumps(r) for r in records[:2]]),
        write_shard(root / "c2" / "part-00000.jsonl.zst", [*(orjson.dumps(r) for r in records[2:]), b"{bad"]),
    ]
    phase, outputs, out_root, upstream = decontaminate_phase(cfg, "text", shards, root, "up")
    markers = run_phases([phase], InlineExecutor(), tmp_path / "logs")[-1]
    assert [str(p) for p in outputs] == [str(out_root / "c1" / "part-00000.jsonl.zst"),
                                          str(out_root / "c2" / "part-00000.jsonl.zst")]  # fmt: skip
    assert [r["id"] for p in outputs for r in read_shard(p)] == ["b", "d"]
    rejected = [r for p in list_shards(out_root / "rejected") for r in read_shard(p)]
    assert [r["id"] for r in rejected] == ["a", "c"]
    a, c = (r["reject"] for r in rejected)
    assert (a["stage"], a["reason"], a["benchmark"], a["line"], a["field"], a["benchmark_field"]) == (
        PHASE, "contaminated", "agronomy.csv", 2, "text", "answer")  # fmt: skip
    assert "agronomy.csv line 2" in a["detail"] and a["ngram"] in a["detail"]
    assert (c["benchmark"], c["line"], c["benchmark_field"]) == ("ceval/val/physics_val.csv", 2, "question")
    quarantined = [r for p in list_shards(out_root / "quarantine") for r in read_shard(p)]
    assert [q["reason"] for q in quarantined] == ["invalid_json"]
    for m in markers:
        assert m["in"] == m["out"] + sum(m["rejected"].values()) + sum(m["quarantined"].values())
    assert [(m["in"], m["out"], m["rejected"], m["quarantined"]) for m in markers] == [
        (2, 1, {"contaminated": 1}, {}),
        (3, 1, {"contaminated": 1}, {"invalid_json": 1}),
    ]
    assert markers[0]["benchmarks"] == {"agronomy.csv": {"rejected": 1, "fields": {"text": 1},
                                                         "benchmark_fields": {"answer": 1}}}  # fmt: skip
    assert markers[0]["shards"][0]["benchmarks"] == markers[0]["benchmarks"]
    assert phase_markers(cfg.run.dir) == markers
    # the same inputs and benchmarks: every unit is done and is not run again
    again, *_ = decontaminate_phase(cfg, "text", shards, root, "up")
    assert all(is_phase_done(u) for u in again.units)
    assert run_phases([again], InlineExecutor(), tmp_path / "logs")[-1] == markers
    # another upstream or a changed benchmark file: the units run again
    assert not any(is_phase_done(u) for u in decontaminate_phase(cfg, "text", shards, root, "other")[0].units)
    (tmp_path / "cmmlu" / "agronomy.csv").write_text(",Question,A,B,C,D,Answer\n0,光合作用,甲,乙,丙,丁,A\n")
    changed, *_, after = decontaminate_phase(cfg, "text", shards, root, "up")
    assert not any(is_phase_done(u) for u in changed.units) and after != upstream
    markers = run_phases([changed], InlineExecutor(), tmp_path / "logs")[-1]
    assert [m["rejected"] for m in markers] == [{}, {"contaminated": 1}]  # L3 is gone from the benchmark


# ------------------------------------------------------------------------------------------ whole merge
@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("decon")
    stages = "pipeline.stages=[tests.stages_for_tests:Synth]"
    extra = ("executor.kind=inline", "shard.records_per_shard=400", stages, "merge.auto=false")
    assert cli.main(["run", *sample_overrides(run, *extra)]) == 0
    return run


def plant(run: Path, folder: Path) -> tuple[list[str], dict[tuple[str, int, str], str], list[dict]]:
    """Benchmarks holding slices of three records' answers (a C-Eval question, a CMMLU correct option, a
    JSONL question) and a question found nowhere; the patterns, the indexed texts by (file, line, field), and
    the records that reach the phase."""
    records = [r for p in find_inputs(config.load(str(run / "config.yaml"))).shards for r in read_shard(p)]
    long = [r for r in records if len(r["answer"]) > 200]
    a, b, c = long[0]["answer"][50:90], long[len(long) // 2]["answer"][100:130], long[-1]["answer"][20:60]
    nowhere = "这是一道在任何记录里都不会出现的基准测试题目文本"
    write_csv(folder / "ceval" / "test" / "x_test.csv", CEVAL_HEADER[:6],
              [["0", nowhere, "甲", "乙", "丙", "丁"], ["1", a, "甲", "乙", "丙", "丁"]])  # fmt: skip
    write_csv(folder / "cmmlu" / "y.csv", CMMLU_HEADER, [["0", "问题", "甲", "乙", b, "丁", "C"]])
    write_jsonl(folder / "z.jsonl", [orjson.dumps({"question": c})])
    texts = {("ceval/test/x_test.csv", 2, "question"): nowhere, ("ceval/test/x_test.csv", 3, "question"): a,
             ("cmmlu/y.csv", 2, "answer"): b, ("z.jsonl", 1, "question"): c}  # fmt: skip
    return [str(folder / "ceval"), str(folder / "cmmlu"), str(folder / "z.jsonl")], texts, records


@pytest.mark.slow
def test_a_whole_merge_rejects_the_planted_records_and_keeps_the_accounting(synth_run, tmp_path):
    patterns, texts, records = plant(synth_run, tmp_path)
    grams = {where: ngrams(t) for where, t in texts.items()}
    expected: dict[str, set] = {}  # brute force: record id -> the benchmarks it shares a 13-gram with
    for r in records:
        mine = [shingle_text(normalizer()(r[f])) for f in ("instruction", "answer")]
        if shared := {where[0] for where, g in grams.items() if any(x in t for x in g for t in mine)}:
            expected[r["id"]] = shared
    assert len(expected) >= 3 and all(len(s) == 1 for s in expected.values())  # the construction holds
    overrides = [f"merge.decontaminate.benchmarks=[{','.join(patterns)}]", "merge.quality.enabled=false"]
    cfg = config.load(str(synth_run / "config.yaml"), overrides)  # the section is built below
    result = run_merge(cfg, InlineExecutor())

    out = synth_run / "merge" / "decontaminate"
    rejected = [r for p in list_shards(out / "rejected") for r in read_shard(p)]
    assert {r["id"] for r in rejected} == set(expected)
    for r in rejected:
        rej = r["reject"]
        assert rej["stage"] == PHASE and rej["reason"] == "contaminated"
        assert {rej["benchmark"]} == expected[r["id"]]
        assert rej["ngram"] in grams[(rej["benchmark"], rej["line"], rej["benchmark_field"])]
        assert rej["ngram"] in ngrams(r[rej["field"]])
    markers = result.decontaminate
    assert markers == phase_markers(synth_run)
    per = Counter(b for s in expected.values() for b in s)
    total: Counter = Counter()
    for m in markers:
        assert m["in"] == m["out"] + sum(m["rejected"].values()) + sum(m["quarantined"].values())
        for s in m["shards"]:
            assert s["in"] == s["out"] + sum(s["rejected"].values())
        total.update({k: v["rejected"] for k, v in m["benchmarks"].items()})
    assert total == per
    assert sum(m["in"] for m in markers) == len(records)
    assert sum(m["out"] for m in markers) == len(records) - len(expected)
    _, dedup = result.dedup[0]
    assert sum(m["in"] for m in dedup) == sum(m["out"] for m in markers)  # the dedup read the clean shards
    assert all(str(out) in s["input"] for m in dedup for s in m["shards"])
    kept_ids = {r["id"] for p in list_shards(result.dataset / "jsonl") for r in read_shard(p)}
    assert not kept_ids & set(expected)
    funnel = orjson.loads((synth_run / "merge" / "report" / "report.json").read_bytes())["funnel"]
    steps = [r["step"] for r in funnel]
    row = funnel[steps.index(PHASE)]
    assert steps[steps.index(PHASE) - 1 : steps.index(PHASE) + 2] == [
        "synth",
        PHASE,
        "merge-dedup-instruction",
    ]
    assert (row["in"], row["out"], row["rejected"]) == (len(records), len(records) - len(expected),
                                                        {"contaminated": len(expected)})  # fmt: skip

    ctx = QualityContext(cfg, synth_run / "merge" / "report", result.dataset, "pairs", result.assemble,
                         result.dedup, [])  # fmt: skip
    s = section(ctx)
    assert s is not None and s.key == "decontamination"
    assert (s.data["checked"], s.data["rejected"]) == (len(records), len(expected))
    assert s.card == [f"Decontaminated against ceval (1 file), cmmlu (1 file), z.jsonl (character 13-grams): "
                      f"{len(expected):,} pairs removed."]  # fmt: skip
    table = {row[0]: row for row in s.tables[0].rows}
    assert table["ceval/test/x_test.csv"][5] == f"{per['ceval/test/x_test.csv']:,}"
    assert table["ceval/test/x_test.csv"][1:5] == ["C-Eval", "2", "2", "0"]

    # the same merge again: the phase's units are done, their markers unchanged
    again = run_merge(cfg, InlineExecutor())
    assert again.decontaminate == markers


def test_a_merge_with_a_broken_benchmark_stops_naming_it(synth_run, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,question,answer\n0,q,A\n")
    assert cli.main(["merge", str(synth_run), f"merge.decontaminate.benchmarks=[{bad}]"]) == 1
    assert "bad.csv line 1: unknown CSV header" in capsys.readouterr().err


def test_no_benchmark_no_phase(tmp_path):
    cfg = make_cfg(tmp_path, [])
    ctx = QualityContext(cfg, tmp_path, tmp_path, "pairs", [], [], [])
    assert section(ctx) is None and not index_dir(cfg).exists()
