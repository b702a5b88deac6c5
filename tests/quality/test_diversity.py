"""Instruction diversity (kun_hpc/quality/diversity.py): distinct-n, openings, verb-object pairs read from
jieba's tags, the evenly spread sample of the dataset shards, the near-duplicate share, the section."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kun_hpc import config
from kun_hpc.io.shards import ZstdJsonlWriter, shard_name
from kun_hpc.quality.diversity import (
    distinct_n,
    near_duplicate_share,
    openings,
    sample_instructions,
    sample_positions,
    section,
    tags,
    verb_object,
    verb_tree,
)
from kun_hpc.quality.plots import cjk_fonts
from kun_hpc.quality.section import QualityContext


def test_distinct_n_counts_ngrams_within_each_instruction():
    texts = ["你好你好", "你好吗"]
    # 1-grams: 你 好 你 好 | 你 好 吗 -> 7 in all, {你, 好, 吗} distinct
    assert distinct_n(texts, 1) == (3, 7)
    # 2-grams: 你好 好你 你好 | 你好 好吗 -> 5, {你好, 好你, 好吗}
    assert distinct_n(texts, 2) == (3, 5)
    # 3-grams: 你好你 好你好 | 你好吗 -> 3, all distinct
    assert distinct_n(texts, 3) == (3, 3)
    # never across two instructions (joined, "ab" + "ab" would make "aba" and "bab"); shorter ones have none
    assert distinct_n(["ab", "ab", "x"], 3) == (0, 0)
    assert distinct_n(["ab", "ab", "x"], 2) == (1, 2)


def test_openings_are_the_first_characters_most_common_first():
    texts = ["请介绍北京", "写一首诗", "请介绍上海", "请介绍", "写", "写一首歌"]
    # first 3 characters: 请介绍 x3, 写一首 x2, 写 x1 (shorter than 3: the whole text)
    assert openings(texts, 3, 10) == [("请介绍", 3), ("写一首", 2), ("写", 1)]
    assert openings(texts, 3, 2) == [("请介绍", 3), ("写一首", 2)]
    assert openings(["b", "a", "b", "a"], 1, 2) == [("b", 2), ("a", 2)]  # a tie: first seen first


@pytest.mark.parametrize(
    ("text", "tagged", "pair"),
    [
        # the first verb and the first noun after it; 春天 is tagged t (time), not a noun
        (
            "写一首关于春天的诗",
            [("写", "v"), ("一首", "m"), ("关于", "p"), ("春天", "t"), ("的", "uj"), ("诗", "n")],
            ("写", "诗"),
        ),
        # 请 is tagged v but stands before the verb (AUXILIARY_VERBS); 北京 is a place noun (ns)
        (
            "请介绍一下北京的历史",
            [("请", "v"), ("介绍", "v"), ("一下", "m"), ("北京", "ns"), ("的", "uj"), ("历史", "n")],
            ("介绍", "北京"),
        ),
        # a second verb before the noun changes nothing: the first verb stays
        (
            "如何提高学习效率？",
            [("如何", "r"), ("提高", "v"), ("学习", "v"), ("效率", "n"), ("？", "x")],
            ("提高", "效率"),
        ),
        # a verb and no noun after it: no pair
        ("中国的首都是哪里", [("中国", "ns"), ("的", "uj"), ("首都", "d"), ("是", "v"), ("哪里", "r")], None),
        # only the auxiliary 帮 and 写, whose object 一封信 jieba tags i (idiom): no pair
        ("帮我写一封信", [("帮", "v"), ("我", "r"), ("写", "v"), ("一封信", "i")], None),
    ],
)
def test_verb_object_pair_from_jieba_tags(text, tagged, pair):
    assert list(tags(text)) == tagged
    assert verb_object(text) == pair


def test_verb_tree_keeps_the_top_verbs_and_their_top_nouns():
    pairs = Counter(
        {("写", "诗"): 5, ("写", "文章"): 3, ("介绍", "北京"): 2, ("写", "信"): 1, ("列举", "水果"): 2}
    )
    # verbs by their pairs: 写 9, 介绍 2, 列举 2 (a tie: first seen first)
    assert verb_tree(pairs, verbs=2, nouns=2) == [
        {"verb": "写", "count": 9, "nouns": [{"noun": "诗", "count": 5}, {"noun": "文章", "count": 3}]},
        {"verb": "介绍", "count": 2, "nouns": [{"noun": "北京", "count": 2}]},
    ]


def test_sample_positions_spread_evenly():
    assert sample_positions(10, 4) == [0, 2, 5, 7]  # i * 10 // 4
    assert sample_positions(3, 5) == [0, 1, 2]  # all of a small dataset
    assert sample_positions(0, 5) == []


def write_dataset(folder: Path, shards: list[list[dict]]) -> list[dict]:
    """Dataset shards as merge-assemble writes them, and their assemble markers (one unit per shard)."""
    markers = []
    for k, rows in enumerate(shards):
        name = shard_name(k)
        if rows:
            w = ZstdJsonlWriter(folder / "jsonl" / name)
            for r in rows:
                w.write(r)
            w.close()
        markers.append(
            {
                "rows": len(rows),
                "shards": [{"input": "x", "output": name if rows else None, "rows": len(rows)}],
            }
        )
    return markers


def context(tmp_path: Path, assemble: list[dict], dedup=(), **overrides) -> QualityContext:
    cfg = config.load(None, [f"run.dir={tmp_path / 'run'}", *(f"{k}={v}" for k, v in overrides.items())])
    (tmp_path / "report").mkdir(exist_ok=True)
    return QualityContext(cfg, tmp_path / "report", tmp_path / "dataset", "pairs", assemble, list(dedup), [])


def test_sample_reads_the_picked_rows_of_every_shard(tmp_path):
    rows = [[{"instruction": f"s{s}r{r}"} for r in range(n)] for s, n in enumerate((3, 0, 5))]
    assemble = write_dataset(tmp_path / "dataset", rows)
    ctx = context(tmp_path, assemble)
    # 8 rows, 3 picked at 0, 8 // 3 = 2, 16 // 3 = 5: shard 0 rows 0 and 2, shard 2 row 5 - 3 = 2
    assert sample_instructions(ctx, 3) == (["s0r0", "s0r2", "s2r2"], 8)
    assert sample_instructions(ctx, 100) == ([f"s0r{r}" for r in range(3)] + [f"s2r{r}" for r in range(5)], 8)


def test_a_row_without_instruction_is_named_by_file_and_line(tmp_path):
    assemble = write_dataset(tmp_path / "dataset", [[{"instruction": "a"}, {"output": "no instruction"}]])
    with pytest.raises(
        ValueError, match=r"part-00000\.jsonl\.zst:2: the dataset row has no string 'instruction'"
    ):
        sample_instructions(context(tmp_path, assemble), 2)
    assemble = write_dataset(tmp_path / "dataset", [[{"instruction": "a"}, {"instruction": "b"}]])
    assemble[0]["shards"][0]["rows"] = 5  # a marker counting more rows than its shard holds
    with pytest.raises(ValueError, match=r"part-00000\.jsonl\.zst: has no line 3: fewer rows than its merge"):
        sample_instructions(context(tmp_path, assemble), 5)


def apply_marker(n_in: int, rejected: dict) -> dict:
    return {"in": n_in, "out": n_in - sum(rejected.values()), "rejected": rejected, "quarantined": {}}


def test_near_duplicate_share_of_the_final_dedup_by_instruction():
    dedup = [
        (
            "instruction",
            [
                apply_marker(10, {"duplicate_exact": 2, "no_content": 1}),
                apply_marker(6, {"near_duplicate": 3}),
            ],
        ),
        ("pair", [apply_marker(10, {"duplicate_exact": 7})]),
    ]
    # removed 2 exact + 3 near of 16 in; no_content is no duplicate; the pair pass is not the one asked for
    assert near_duplicate_share(dedup) == {
        "in": 16,
        "duplicate_exact": 2,
        "near_duplicate": 3,
        "removed": 5,
        "share": 5 / 16,
    }
    assert near_duplicate_share(dedup[1:]) is None  # no dedup by instruction ran
    assert near_duplicate_share([("instruction", [])])["share"] is None  # nothing went in


def test_section_on_a_constructed_dataset(tmp_path):
    made = ["写一首关于春天的诗", "请介绍一下北京的历史", "写一首关于春天的诗", "中国的首都是哪里"] * 3
    assemble = write_dataset(
        tmp_path / "dataset", [[{"instruction": t} for t in made[:7]], [{"instruction": t} for t in made[7:]]]
    )
    dedup = [("instruction", [apply_marker(20, {"duplicate_exact": 4, "near_duplicate": 4})])]
    ctx = context(tmp_path, assemble, dedup, **{"merge.quality.opening_chars": 2})
    s = section(ctx)
    assert s.key == "diversity" and s.data["sample"] == 12 and s.data["rows"] == 12
    # openings (2 characters): 写一 x6, 请介 x3, 中国 x3
    assert s.data["openings"] == [
        {"opening": "写一", "count": 6, "share": 0.5},
        {"opening": "请介", "count": 3, "share": 0.25},
        {"opening": "中国", "count": 3, "share": 0.25},
    ]
    vo = s.data["verb_object"]
    assert vo["pairs"] == [
        {"verb": "写", "noun": "诗", "count": 6},
        {"verb": "介绍", "noun": "北京", "count": 3},
    ]
    assert vo["none"] == 3 and vo["none_share"] == 0.25
    # distinct-1: the sample's distinct characters / all its characters (3 texts, repeated)
    chars = set("".join(made))
    assert s.data["distinct"]["1"] == {
        "distinct": len(chars),
        "total": len("".join(made)),
        "ratio": len(chars) / len("".join(made)),
    }
    assert s.data["near_duplicates"]["share"] == 8 / 20
    for p in s.plots:
        assert (ctx.folder / p).stat().st_size > 0
    assert s.plots == ["diversity_openings.png", "diversity_verb_object.png", "diversity_sunburst.png"]
    # without a CJK font the section says the plots' labels are boxes
    assert any(line.startswith("No CJK font") for line in s.lines) == (not cjk_fonts())
    assert "distinct-1/2/3" in s.card[0] and "写一 (50.0%)" in s.card[0] and "40.0%" in s.card[0]
    assert s.tables[0].title.startswith("Most common openings")


def test_a_text_dataset_has_no_diversity_section(tmp_path):
    ctx = context(tmp_path, [])
    ctx.kind = "text"
    assert section(ctx) is None
