"""Answer faithfulness (issue 14, items 2 and 3): the measures on pairs whose values are known by construction
or computed by an independent reference in this file, the drift / copy / refusal flags, the rules stage's
``faithfulness`` field and its drift / copy rules, the dataset columns and the report sections."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from kun_hpc import cli, config
from kun_hpc.cluster.grid import stage_hashes
from kun_hpc.config import load_run as load_run_config
from kun_hpc.core.records import Rejected
from kun_hpc.filtering.faithfulness import BINS, Faithfulness, RuleParams, measure
from kun_hpc.io.shards import ZstdJsonlWriter, read_shard
from kun_hpc.merge.assemble import AssembleTask, arrow_schema, assemble_unit
from kun_hpc.quality.faithfulness import section, tone_section
from kun_hpc.quality.section import QualityContext
from kun_hpc.stages.registry import make_stage
from kun_hpc.stages.rules import ANSWER_RULES, apply_rules

UNIT = "长城是中国古代的军事防御工程"
# the unit kept in order, 伟大 and 。 added: LCS 14 of 14 unit and 17 answer characters; of the answer's 15
# distinct 3-grams, 代的伟 的伟大 伟大军 大军事 工程。 are not in the unit
POLISHED = "长城是中国古代的伟大军事防御工程。"


DEFAULT = RuleParams.from_config(OmegaConf.structured(config.RulesConfig))  # the rules section's defaults


def params(**settings) -> RuleParams:
    return dataclasses.replace(DEFAULT, **settings)


def lcs_reference(a: str, b: str) -> int:
    """The textbook O(len(a) * len(b)) dynamic programme."""
    row = [0] * (len(b) + 1)
    for ca in a:
        prev = 0  # row[j - 1] of the previous line
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if ca == cb else max(row[j], row[j - 1])
    return row[-1]


def novel_reference(unit: str, answer: str, n: int) -> float:
    """Distinct substrings of length min(n, len(answer)) of the answer not contained in the unit."""
    k = min(n, len(answer))
    grams = {answer[i : i + k] for i in range(len(answer) - k + 1)}
    return sum(g not in unit for g in grams) / len(grams) if answer else 0.0


# ---------------------------------------------------------------------------------------------- measure
def test_an_answer_equal_to_its_unit_is_a_copy_whatever_its_whitespace():
    p = params()
    assert measure(UNIT, UNIT, p) == Faithfulness(1.0, 1.0, 0.0, ("copy",))
    reflowed = "  长城是中国\n古代的 军事\u3000防御工程\n"  # polishing re-flows lines: no change of content
    assert measure(UNIT, reflowed, p) == Faithfulness(1.0, 1.0, 0.0, ("copy",))


def test_an_answer_sharing_no_character_with_its_unit_is_drift():
    answer = "黄河发源于青藏高原，流经九个省区"
    assert not set(answer) & set(UNIT)
    assert measure(UNIT, answer, params()) == Faithfulness(0.0, 0.0, 1.0, ("drift",))


def test_a_polished_answer_by_hand_is_neither():
    f = measure(UNIT, POLISHED, params())
    assert f == Faithfulness(1.0, round(14 / 17, 4), round(5 / 15, 4), ())
    assert f.as_dict() == {"lcs_recall": 1.0, "lcs_precision": 0.8235, "novel_share": 0.3333, "flags": []}


def test_a_small_pair_by_hand_and_the_flags_decided_on_the_rounded_values():
    # LCS of 长城很长很长 and 长城非常长 is 长城长 (the answer's 非常 is nowhere in the unit): 3
    unit, answer = "长城很长很长", "长城非常长"
    assert lcs_reference(unit, answer) == 3
    # 2-grams of the answer: 长城 城非 非常 常长, of which only 长城 is in the unit: 3 / 4 novel
    f = measure(unit, answer, params(novel_ngram=2, drift_min_novel=0.75))
    assert f == Faithfulness(0.5, 0.6, 0.75, ("drift",))  # novel_share >= drift_min_novel: drift
    assert measure(unit, answer, params(novel_ngram=2, drift_min_novel=0.7501)).flags == ()
    # copy needs both: recall 1.0 but precision 3/5 here
    assert measure("长城长", answer, params(copy_min_precision=0.6)).flags == ("copy", "drift")
    assert measure("长城长", answer, params(copy_min_precision=0.61)).flags == ("drift",)


def test_lcs_and_novel_share_equal_the_references_on_random_short_strings():
    rng = random.Random(14)
    alphabet = "ab长城 \n\U0001f600"  # an astral character: code points past 16 bits pack too
    for i in range(300):
        unit = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        answer = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        n = 1 + i % 4  # 1..3: packed codes in numpy; 4: sets of strings
        f = measure(unit, answer, params(novel_ngram=n))
        u, a = "".join(unit.split()), "".join(answer.split())
        lcs = lcs_reference(u, a)
        assert f.lcs_recall == (round(lcs / len(u), 4) if u else 0.0), (unit, answer)
        assert f.lcs_precision == (round(lcs / len(a), 4) if a else 0.0), (unit, answer)
        assert f.novel_share == round(novel_reference(u, a, n), 4), (unit, answer, n)


def test_empty_texts_share_nothing():
    p = params()
    assert measure("", "", p) == Faithfulness(0.0, 0.0, 0.0, ())
    assert measure(UNIT, " \n", p) == Faithfulness(0.0, 0.0, 0.0, ())  # no answer n-gram: nothing novel
    assert measure("", "长城", p) == Faithfulness(0.0, 0.0, 1.0, ("drift",))  # shorter than n: one n-gram
    assert measure(UNIT, "长城", p).novel_share == 0.0


@pytest.mark.parametrize(
    "answer",
    [
        "抱歉，我无法回答这个问题。",
        "很抱歉，但我不能提供这方面的信息。",
        "作为一个AI语言模型，我没有个人观点。",
        "我无法提供实时的天气信息。",
        "As an AI language model, I do not have opinions.",
        "I'm sorry, but I cannot help with that request.",
        "i cannot assist with this.",
    ],
)
def test_refusals_in_chinese_and_english_are_flagged(answer):
    assert "refusal" in measure(UNIT, answer, params()).flags


@pytest.mark.parametrize(
    "answer",
    [
        "他向朋友表示抱歉，因为他迟到了半个小时。",  # 抱歉 as an apology in a story, not a refusal
        "长城是中国古代的伟大军事防御工程，我们应当保护它。",
        "As a rule, the wall was built by conscripted labour.",
    ],
)
def test_a_normal_answer_is_not_a_refusal(answer):
    assert "refusal" not in measure(UNIT, answer, params()).flags


def test_no_refusal_patterns_no_refusal_flag():
    assert measure(UNIT, "抱歉，我无法回答。", params(refusal=None)).flags == ("drift",)


# ------------------------------------------------------------------------------------------ rules stage
def test_the_rules_stage_puts_faithfulness_on_kept_pairs_measured_on_the_final_answer():
    stage = make_stage("rules", config.load(None, ["rules.min_answer_chars=5"]))
    batch = [
        {"id": "a", "instruction": "长城是什么？", "answer": f"\n {POLISHED}  ", "text": UNIT},
        {"id": "b", "instruction": "长城是什么？", "answer": UNIT, "text": UNIT},
        {"id": "c", "instruction": "长城是什么？", "answer": POLISHED},  # no unit: kept, not measured
        {"id": "d", "instruction": "长城是什么？", "answer": POLISHED, "text": None},
    ]
    a, b, c, d = stage.process(batch)
    assert a["answer"] == POLISHED
    assert a["faithfulness"] == {
        "lcs_recall": 1.0,
        "lcs_precision": 0.8235,
        "novel_share": 0.3333,
        "flags": [],
    }
    # the drift and copy rules are not in the default list: a copy is kept, flagged
    assert b["faithfulness"] == {
        "lcs_recall": 1.0,
        "lcs_precision": 1.0,
        "novel_share": 0.0,
        "flags": ["copy"],
    }
    assert c == batch[2] and d == batch[3]  # not measured: no field


def test_the_drift_and_copy_rules_drop_when_listed():
    rules = "rules.answer_rules=[strip_whitespace,not_empty,drift,copy]"
    stage = make_stage("rules", config.load(None, [rules]))
    batch = [
        {"id": "a", "instruction": "长城是什么？", "answer": POLISHED, "text": UNIT},
        {"id": "b", "instruction": "长城是什么？", "answer": f"{UNIT}\n", "text": UNIT},
        {"id": "c", "instruction": "长城是什么？", "answer": "黄河发源于青藏高原", "text": UNIT},
        {"id": "d", "instruction": "长城是什么？", "answer": POLISHED},
        {"id": "e", "instruction": "长城是什么？", "answer": "   ", "text": UNIT},
    ]
    out = stage.process(batch)
    assert out[0]["faithfulness"]["flags"] == []
    assert [(r.reason, r.detail) for r in out[1:]] == [
        ("answer_copy", "recall 1.0, precision 1.0, novel 0.0"),
        ("answer_drift", "recall 0.0, precision 0.0, novel 1.0"),
        ("missing_field", "text"),  # a unit rule is listed: the unit is required
        ("answer_empty", ""),  # rules run in order: not_empty before drift
    ]
    assert stage.provenance()["answer_rules"] == ["strip_whitespace", "not_empty", "drift", "copy"]
    with pytest.raises(ValueError, match="needs the unit"):
        apply_rules(POLISHED, ["drift"], ANSWER_RULES, params())


def test_the_rules_stage_counts_the_phrases_it_dropped_for():
    stage = make_stage("rules", config.load(None, []))
    outputs = [
        Rejected({}, "answer_refusal", "抱歉，我"),
        Rejected({}, "answer_refusal", "抱歉，我"),
        Rejected({}, "answer_keyword", "作为"),
        Rejected({}, "answer_too_short", "3 < 20 characters"),
        {"id": "kept"},
    ]
    assert stage.chunk_stats(outputs) == {"refusal_phrases": {"抱歉，我": 2}, "answer_keywords": {"作为": 1}}
    assert stage.chunk_stats([{"id": "kept"}]) == {}


def test_the_new_rules_are_valid_names_and_their_settings_rerun_the_stage():
    base = ["pipeline.stages=[rules]"]
    assert list(config.load(None, [*base, "rules.answer_rules=[drift,copy]"]).rules.answer_rules) == [
        "drift",
        "copy",
    ]
    with pytest.raises(config.ConfigError, match=r"rules\.answer_rules"):
        config.load(None, [*base, "rules.answer_rules=[drfit]"])
    hashes = stage_hashes(config.load(None, base))["rules"]
    for key, value in [("novel_ngram", 4), ("drift_min_novel", 0.5), ("copy_min_recall", 0.9)]:
        assert stage_hashes(config.load(None, [*base, f"rules.{key}={value}"]))["rules"] != hashes


# ---------------------------------------------------------------------------------------------- dataset
def test_assemble_writes_the_faithfulness_columns_and_their_histograms(tmp_path):
    given = {"lcs_recall": 0.5, "lcs_precision": 0.25, "novel_share": 0.9, "flags": ["drift"]}
    records = [
        {"id": "a", "instruction": "问", "answer": POLISHED, "text": UNIT, "faithfulness": given},  # as given
        {"id": "b", "instruction": "问", "answer": UNIT, "text": UNIT},  # measured here: a copy
        {"id": "c", "instruction": "问", "answer": "抱歉，我无法回答。", "text": UNIT},  # drift and refusal
        {"id": "d", "instruction": "问", "answer": POLISHED},  # no unit: null
    ]
    shard = tmp_path / "in" / "part-00000.jsonl.zst"
    w = ZstdJsonlWriter(shard, 3)
    for r in records:
        w.write(r)
    w.close()
    rules = OmegaConf.to_container(config.load(None, []).rules)
    marker = assemble_unit(AssembleTask("pairs", (str(shard),), str(tmp_path / "ds"), 0, True, 3, rules))
    rows = list(read_shard(tmp_path / "ds" / "jsonl" / "part-00000.jsonl.zst"))
    table = pq.read_table(tmp_path / "ds" / "parquet" / "part-00000.parquet")
    assert table.schema == arrow_schema("pairs")
    assert table.to_pylist() == rows
    expect = [
        (0.5, 0.25, 0.9, ["drift"]),
        (1.0, 1.0, 0.0, ["copy"]),
        (0.0, 0.0, 1.0, ["drift", "refusal"]),
        (None, None, None, None),
    ]
    assert [(r["lcs_recall"], r["lcs_precision"], r["novel_share"], r["flags"]) for r in rows] == expect
    assert marker["flags"] == {"drift": 2, "copy": 1, "refusal": 1}
    assert marker["refusal_phrases"] == {"抱歉，我": 1}
    h = marker["histograms"]
    assert len(h["lcs_recall"]) == len(BINS) - 1 == 20
    # 0.5 in [0.5, 0.55) (bin 10); 1.0 in the last bin, closed on the right; 0.0 in the first; null: none
    assert h["lcs_recall"] == [1] + [0] * 9 + [1] + [0] * 8 + [1]
    assert h["lcs_precision"] == [1] * 1 + [0] * 4 + [1] + [0] * 13 + [1]  # 0.25: bin 5
    assert h["novel_share"] == [1] + [0] * 17 + [1, 1]  # 0.9: bin 18, 1.0: bin 19


def test_without_the_rules_settings_unmeasured_pairs_stay_null(tmp_path):
    shard = tmp_path / "part-00000.jsonl.zst"
    w = ZstdJsonlWriter(shard, 3)
    w.write({"id": "b", "instruction": "问", "answer": UNIT, "text": UNIT})
    w.close()
    marker = assemble_unit(AssembleTask("pairs", (str(shard),), str(tmp_path / "ds"), 0, False, 3))
    (row,) = read_shard(tmp_path / "ds" / "jsonl" / "part-00000.jsonl.zst")
    assert (row["lcs_recall"], row["flags"]) == (None, None)
    assert marker["flags"] == {} and sum(marker["histograms"]["lcs_recall"]) == 0


# ------------------------------------------------------------------------------------ run and report
PLAIN = [f"第{i}号：长城是中国古代的军事防御工程，东起山海关，西至嘉峪关。" for i in range(12)]
KEYWORD = [f"第{i}号：作为一名老师，他每天都认真备课，从来不迟到。" for i in range(12, 16)]  # answer_keyword
REFUSING = [f"第{i}号：抱歉，我无法回答这个关于长城的问题。" for i in range(16, 19)]  # answer_refusal


def synth_run(folder: Path, *overrides: str) -> Path:
    """The texts above through Synth (its answer is the unit itself, opening with a distinct number: no
    duplicate instruction) and the rules stage, merged."""
    corpus = folder / "tiny.jsonl"
    corpus.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in PLAIN + KEYWORD + REFUSING))
    run = folder / "run"
    args = [
        f"run.dir={run}",
        f"corpora=[{{name: tiny, format: jsonl, paths: [{corpus}]}}]",
        "executor.kind=inline",
        "pipeline.stages=[tests.stages_for_tests:Synth,rules]",
        *overrides,
    ]
    assert cli.main(["run", *args]) == 0
    return run


@pytest.fixture(scope="module")
def default_rules_run(tmp_path_factory) -> Path:
    return synth_run(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def keep_all_run(tmp_path_factory) -> Path:
    return synth_run(tmp_path_factory.mktemp("keep"), "rules.answer_rules=[strip_whitespace]")


def context(run: Path) -> QualityContext:
    cfg = load_run_config(run)
    report = orjson.loads((run / "merge" / "report" / "report.json").read_bytes())
    markers = [orjson.loads(p.read_bytes()) for p in sorted((run / "done" / "merge-assemble").glob("*.json"))]
    folder = run / "merge" / "report"
    return QualityContext(cfg, folder, run / "merge" / "dataset", "pairs", markers, [], report["funnel"])


def dataset(run: Path) -> list[dict]:
    return [r for p in sorted((run / "merge" / "dataset" / "jsonl").glob("*")) for r in read_shard(p)]


@pytest.mark.slow
def test_a_run_of_copies_is_all_copy_in_the_dataset_and_the_report(default_rules_run):
    rows = dataset(default_rules_run)
    assert sorted(r["output"] for r in rows) == sorted(PLAIN)
    for r in rows:
        assert [r[k] for k in ("lcs_recall", "lcs_precision", "novel_share", "flags")] == [1, 1, 0, ["copy"]]
    ctx = context(default_rules_run)
    s = section(ctx)
    assert s.data["measured"] == s.data["pairs"] == len(PLAIN)
    assert s.data["flags"] == {"drift": 0, "copy": len(PLAIN), "refusal": 0}
    assert s.data["histograms"]["lcs_recall"] == [0] * 19 + [len(PLAIN)]
    assert s.data["histograms"]["novel_share"] == [len(PLAIN)] + [0] * 19
    assert s.data["dropped"] == {"answer_drift": 0, "answer_copy": 0, "answer_refusal": len(REFUSING)}
    assert s.plots == [f"faithfulness_{k}.png" for k in ("lcs_recall", "lcs_precision", "novel_share")]
    assert all((ctx.folder / name).stat().st_size > 0 for name in s.plots)
    assert f"copy {len(PLAIN):,} (100.0%)" in s.card[0]


def test_the_tone_section_counts_what_the_rules_stage_dropped(default_rules_run):
    t = tone_section(context(default_rules_run))
    assert t.data["dropped"] == {"answer_refusal": len(REFUSING), "answer_keyword": len(KEYWORD)}
    assert t.data["dropped_matches"] == {
        "refusal_phrases": {"抱歉，我": len(REFUSING)},
        "answer_keywords": {"作为": len(KEYWORD)},
    }
    assert t.data["in_dataset"] == 0 and t.data["in_dataset_matches"] == {}


@pytest.mark.slow
def test_refusals_the_rules_keep_are_flagged_in_the_dataset(keep_all_run):
    rows = dataset(keep_all_run)
    assert len(rows) == len(PLAIN + KEYWORD + REFUSING)
    refusing = sorted(r["output"] for r in rows if "refusal" in r["flags"])
    assert refusing == sorted(REFUSING)
    t = tone_section(context(keep_all_run))
    assert t.data["dropped"] == {"answer_refusal": 0, "answer_keyword": 0}
    assert t.data["in_dataset"] == len(REFUSING)
    assert t.data["in_dataset_matches"] == {"抱歉，我": len(REFUSING)}
    s = section(context(keep_all_run))
    assert s.data["flags"] == {"drift": 0, "copy": len(rows), "refusal": len(REFUSING)}


def test_a_text_dataset_has_no_faithfulness_section(default_rules_run):
    ctx = context(default_rules_run)
    ctx.kind = "text"
    assert section(ctx) is None and tone_section(ctx) is None
