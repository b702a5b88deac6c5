"""Dedup on real text: the overlapping sample corpora, planted near-duplicates, task counts, bad input, and
the same dedup on the sandbox Slurm cluster."""

from __future__ import annotations

import os
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from kun_hpc import config
from kun_hpc.cluster.executors import InlineExecutor
from kun_hpc.cluster.phases import run_phases
from kun_hpc.core.hashing import file_sha256
from kun_hpc.io.quarantine import read_quarantine
from kun_hpc.io.shards import ZstdJsonlWriter, list_shards, read_shard
from kun_hpc.merge.dedup import dedup_phases, dedup_stats, make_job, settings_of
from kun_hpc.merge.minhash import MinHasher
from kun_hpc.merge.raw import run_dedup_raw
from kun_hpc.run import drive
from kun_hpc.stages.shard import run_shard
from tests.conftest import REPO, sample_overrides, start_sandbox
from tools.bench_dedup import KINDS, jaccard, lev_similarity, normal_form
from tools.bench_dedup import plant as planted_copy
from tools.bench_dedup import write_shards as bench_shards


def sample_cfg(run: Path, *extra: str):
    cfg = config.load(None, sample_overrides(run, "executor.kind=inline", "dedup.raw=true", *extra))
    config.save_resolved(cfg, run)
    return cfg


def kept_and_rejected(root: Path) -> tuple[list[dict], list[dict]]:
    kept = [r for p in list_shards(root) if "rejected" not in p.parts and "quarantine" not in p.parts
            for r in read_shard(p)]  # fmt: skip
    rejected = [r for p in list_shards(root / "rejected") for r in read_shard(p)]
    return kept, rejected


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("raw")
    cfg = sample_cfg(run)
    drive(run_shard(cfg), InlineExecutor(), run / "logs")
    run_dedup_raw(cfg, InlineExecutor())
    return run


@pytest.mark.slow
def test_every_cross_corpus_duplicate_goes_and_no_distinct_text_does(sample_run):
    by_text: dict[str, list[dict]] = defaultdict(list)
    for p in list_shards(sample_run / "shards"):
        for r in read_shard(p):
            by_text[r["text"]].append(r)
    groups = [g for g in by_text.values() if len(g) > 1]
    assert {len({r["corpus"] for r in g}) for g in groups} == {2}  # the planted overlaps span two corpora
    kept, rejected = kept_and_rejected(sample_run / "dedup_raw")
    kept_ids = {r["id"] for r in kept}
    assert {r["text"] for r in kept} == set(by_text)  # every distinct text survives, once
    assert len(kept) == len(by_text)
    expected_gone = sum(len(g) - 1 for g in groups)
    assert expected_gone == 400
    assert len(rejected) == expected_gone
    for r in rejected:
        assert r["reject"]["reason"] == "duplicate_exact"
        assert r["reject"]["survivor"] in kept_ids
        survivor = next(s for s in by_text[r["text"]] if s["id"] == r["reject"]["survivor"])
        assert survivor["id"] == min(s["id"] for s in by_text[r["text"]])  # equal length: smallest id


def test_apply_markers_keep_the_accounting(sample_run):
    from kun_hpc.io.markers import read_marker
    from kun_hpc.merge.raw import PHASE

    markers = [read_marker(sample_run, f"{PHASE}.apply", p.stem) for p in (sample_run / "done" /
               f"{PHASE}.apply").glob("*.json")]  # fmt: skip
    assert markers
    total_in = sum(m["in"] for m in markers)
    assert total_in == sum(1 for p in list_shards(sample_run / "shards") for _ in read_shard(p))
    for m in markers:
        assert m["in"] == m["out"] + sum(m["rejected"].values()) + sum(m["quarantined"].values())
        for s in m["shards"]:
            assert sum(1 for _ in read_shard(s["output"])) == s["out"]


# --------------------------------------------------------------------------------------- planted dups
def _sample_records(run: Path) -> list[dict]:
    cfg = config.load(None, sample_overrides(run, "executor.kind=inline"))
    drive(run_shard(cfg), InlineExecutor(), run / "logs")
    seen, out = set(), []
    for p in list_shards(run / "shards"):
        for r in read_shard(p):
            if len(r["text"]) >= 150 and r["text"] not in seen:
                seen.add(r["text"])
                out.append(r)
    return out


def _edit(text: str, rng: random.Random, frac: float) -> str:
    chars = list(text)
    for i in rng.sample(range(len(chars)), max(1, int(len(chars) * frac))):
        chars[i] = chr(rng.randrange(0x4E00, 0x9FA5))
    return "".join(chars)


def _punct(text: str) -> str:
    for a, b in (("，", ","), ("。", ". "), ("「", '"'), ("」", '"'), ("、", " ")):
        text = text.replace(a, b)
    return text


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[Path], dict[str, str]]:
    """400 distinct paragraphs (score 0.9) and variants of the first 300 (score 0.1): 1% of characters
    edited, punctuation changed, or (Traditional paragraphs) converted to Simplified. Returns the input
    root, its shards and variant id -> base id."""
    import opencc

    t2s = opencc.OpenCC("t2s").convert
    base = _sample_records(tmp_path_factory.mktemp("src"))[:400]
    assert len(base) == 400
    rng = random.Random(7)
    records, planted_of = [], {}
    for i, r in enumerate(base):
        records.append({"id": f"b{i:04d}", "corpus": "base", "text": r["text"], "score": 0.9})
        if i >= 300:
            continue
        simplified = t2s(r["text"])
        kind = ["edit", "punct", "t2s"][i % 3]
        if kind == "t2s" and simplified == r["text"]:
            kind = "edit"  # a Simplified paragraph: nothing to convert
        if kind == "edit":
            text = _edit(r["text"], rng, 0.01)
        else:
            text = _punct(r["text"]) if kind == "punct" else simplified
        vid = f"v{i:04d}-{kind}"
        records.append({"id": vid, "corpus": "variant", "text": text, "score": 0.1})
        planted_of[vid] = f"b{i:04d}"
    rng.shuffle(records)
    root = tmp_path_factory.mktemp("planted")
    shards = []
    for k in range(5):
        w = ZstdJsonlWriter(root / ("a" if k % 2 else "b") / f"part-{k:05d}.jsonl.zst")
        for r in records[k::5]:
            w.write(r)
        w.close()
        shards.append(w.path)
    return root, sorted(shards), planted_of


def dedup(inputs: list[Path], in_root: Path, out: Path, *overrides: str, key: str = "text"):
    cfg = config.load(None, [f"run.dir={out}", *overrides])
    job = make_job("dedup-test", key, inputs, in_root, out / "dedup", settings_of(cfg.dedup), str(out))
    markers = run_phases(dedup_phases(job, "test"), InlineExecutor(), out / "logs")[-1]
    return job, markers


@pytest.mark.slow
def test_minhash_recall_and_precision_on_planted_near_duplicates(planted, tmp_path):
    root, shards, planted_of = planted
    dedup(shards, root, tmp_path, "dedup.normalize.t2s=true")
    kept, rejected = kept_and_rejected(tmp_path / "dedup")
    removed = {r["id"]: r["reject"] for r in rejected}
    # precision: every removed record is a planted variant, removed in favour of its own base
    assert all(rid.startswith("v") for rid in removed), sorted(removed)[:5]
    assert all(rej["survivor"] == planted_of[rid] for rid, rej in removed.items())
    assert all(r["id"] in {r["id"] for r in kept} for r in kept if r["id"].startswith("b"))
    assert sum(r["id"].startswith("b") for r in kept) == 400
    # recall by kind; punctuation and Traditional/Simplified are exact after normalisation
    found = Counter(rid.split("-")[1] for rid in removed)
    planted_kinds = Counter(v.split("-")[1] for v in planted_of)
    assert found["punct"] == planted_kinds["punct"]
    assert found["t2s"] == planted_kinds["t2s"] > 20
    assert found["edit"] >= 0.95 * planted_kinds["edit"], (found, planted_kinds)
    reasons = {rid.split("-")[1]: rej["reason"] for rid, rej in removed.items()}
    assert reasons["punct"] == reasons["t2s"] == "duplicate_exact"
    assert reasons["edit"] == "near_duplicate"


def test_without_t2s_traditional_and_simplified_stay_apart(planted, tmp_path):
    root, shards, _ = planted
    dedup(shards, root, tmp_path, "dedup.near=false")  # exact only, no OpenCC
    _, rejected = kept_and_rejected(tmp_path / "dedup")
    assert {r["id"].split("-")[1] for r in rejected} == {"punct"}


@pytest.mark.slow
def test_results_do_not_depend_on_task_counts(planted, tmp_path):
    root, shards, _ = planted
    a, _ = dedup(shards, root, tmp_path / "a", "dedup.partitions=1", "dedup.shards_per_task=1")
    b, mb = dedup(shards, root, tmp_path / "b", "dedup.partitions=7", "dedup.shards_per_task=3",
                  "dedup.batch_docs=37")  # fmt: skip
    assert len(mb) == 2  # 5 shards in groups of 3
    assert [file_sha256(p) for p in a.outputs] == [file_sha256(p) for p in b.outputs]
    strip = lambda rs: sorted((r["id"], r["reject"]["reason"], r["reject"]["survivor"]) for r in rs)  # noqa: E731
    assert strip(kept_and_rejected(tmp_path / "a" / "dedup")[1]) == strip(
        kept_and_rejected(tmp_path / "b" / "dedup")[1]
    )


def test_survivor_rule_score_then_length_then_id(tmp_path):
    recs = [
        {"id": "c", "text": "同一段文字，用来测试保留规则。", "score": 0.2},
        {"id": "b", "text": "同一段文字，用来测试保留规则！！", "score": 0.7},  # highest score wins
        {"id": "a", "text": "同一段文字，用来测试保留规则", "score": None},
        {"id": "z", "text": "另一段文字：长的留下。"},
        {"id": "y", "text": "另一段文字，长的留下"},
        {"id": "x", "text": "另一段文字，长的留下。"},  # as long as z; x < z
    ]
    w = ZstdJsonlWriter(tmp_path / "in" / "c" / "part-00000.jsonl.zst")
    for r in recs:
        w.write(r)
    w.close()
    dedup([w.path], tmp_path / "in", tmp_path / "out")
    kept, rejected = kept_and_rejected(tmp_path / "out" / "dedup")
    assert sorted(r["id"] for r in kept) == ["b", "x"]
    assert {r["id"]: r["reject"]["survivor"] for r in rejected} == {"c": "b", "a": "b", "z": "x", "y": "x"}
    dedup([w.path], tmp_path / "in", tmp_path / "out2", "dedup.keep=[id]")
    assert sorted(r["id"] for r in kept_and_rejected(tmp_path / "out2" / "dedup")[0]) == ["a", "x"]


def test_bad_lines_are_quarantined_and_counted(tmp_path):
    import zstandard

    path = tmp_path / "in" / "c" / "part-00000.jsonl.zst"
    path.parent.mkdir(parents=True)
    same = "同一段".encode()
    lines = b'{"id": "1", "text": "%s"}\n{not json\n{"id": "2", "text": "%s"}\n' % (same, same)
    path.write_bytes(zstandard.compress(lines))
    job, markers = dedup([path], tmp_path / "in", tmp_path / "out")
    m = markers[0]
    assert (m["in"], m["out"], m["rejected"], m["quarantined"]) == (3, 1, {"duplicate_exact": 1},
                                                                    {"invalid_json": 1})  # fmt: skip
    bad = read_quarantine(job.quarantine[0])
    assert (
        bad[0]["reason"] == "invalid_json"
        and bad[0]["source"] == path.name
        and "not json" in bad[0]["preview"]
    )


def test_minhash_signatures_do_not_depend_on_batching(planted):
    texts = [*[r["text"] for r in read_shard(planted[1][0])][:50], "短", "", "四个字儿"]
    h = MinHasher(3, 120, 1)
    together, distinct = h.signatures(texts)
    alone = [h.signatures([t]) for t in texts]
    assert all((together[i] == alone[i][0][0]).all() for i in range(len(texts)))
    assert distinct.tolist() == [len({t[i : i + 3] for i in range(max(len(t) - 2, 1))} - {""}) for t in texts]
    assert (together[len(texts) - 2] == 0xFFFFFFFF).all()  # empty: no shingles


# --------------------------------------------------------------------------------------------- slurm
@pytest.mark.slurm
def test_raw_dedup_on_slurm_matches_the_local_run(sample_run, tmp_path):
    start_sandbox()
    os.environ["PYTHONPATH"] = str(REPO)
    slurm_args = ("executor.kind=slurm", "executor.poll_interval_s=1", "executor.slurm.mem_gb=0.5",
                  "executor.slurm.time_min=10", "dedup.partitions=3", "dedup.shards_per_task=2")  # fmt: skip
    cfg = sample_cfg(tmp_path, *slurm_args)
    from kun_hpc.cluster.scheduler import read_registry
    from kun_hpc.run import make_executor

    drive(run_shard(cfg), InlineExecutor(), tmp_path / "logs")
    run_dedup_raw(cfg, make_executor(cfg))
    phases = [e["stage"] for e in read_registry(tmp_path)]
    assert {"dedup-raw.signatures", "dedup-raw.buckets", "dedup-raw.clusters", "dedup-raw.apply"} <= set(
        phases
    )
    local = {
        p.relative_to(sample_run / "dedup_raw"): file_sha256(p) for p in list_shards(sample_run / "dedup_raw")
    }
    slurm = {
        p.relative_to(tmp_path / "dedup_raw"): file_sha256(p) for p in list_shards(tmp_path / "dedup_raw")
    }
    assert slurm == local


# ------------------------------------------------------------------------------ short texts (issue 13)
POEMS = REPO / "shards" / "sample" / "poetry" / "poems-2000.jsonl.zst"
SEED = REPO / "shards" / "sample" / "seed" / "alpaca_zh_demo.json"


def plain(text: str) -> str:
    """The bench's normal form, independent of kun_hpc.merge.normalize: NFKC, lower case, no punctuation
    or whitespace."""
    return normal_form(text)


def trigram_jaccard(a: str, b: str) -> float:
    return jaccard(plain(a), plain(b), 3)


def write_shards(records: list[dict], root: Path, shards: int = 3) -> list[Path]:
    return bench_shards(records, root, shards)


def plant(bases: list[str], per_kind: int, seed: int) -> tuple[list[dict], dict[str, str]]:
    """Records ``b<i>`` of the bases and ``c-<kind>-<k>`` planted copies of randomly chosen ones (each base
    copied at most once); copy id -> base id."""
    rng = random.Random(seed)
    records = [{"id": f"b{i:04d}", "corpus": "base", "text": t} for i, t in enumerate(bases)]
    order = rng.sample(range(len(bases)), len(bases))
    copies: dict[str, str] = {}
    for kind in KINDS:
        made = 0
        while made < per_kind:
            i = order.pop()
            text = planted_copy(kind, bases[i], rng)
            if text is None or text == bases[i]:
                continue
            cid = f"c-{kind}-{made:03d}"
            records.append({"id": cid, "corpus": "copies", "text": text})
            copies[cid] = f"b{i:04d}"
            made += 1
    rng.shuffle(records)
    return records, copies


def recall_and_precision(root: Path, records: list[dict], copies: dict[str, str]) -> tuple[dict, list]:
    """Recall per kind (the copy or its base removed) and the removals whose text is not a reader's copy
    of the survivor's (Levenshtein similarity of the plain forms < 0.7)."""
    text = {r["id"]: r["text"] for r in records}
    _, rejected = kept_and_rejected(root)
    removed = {r["id"]: r["reject"] for r in rejected}
    recall = {
        kind: sum(c in removed or b in removed for c, b in copies.items() if c.split("-")[1] == kind)
        / sum(c.split("-")[1] == kind for c in copies)
        for kind in KINDS
    }
    wrong = [(rid, rej["survivor"]) for rid, rej in removed.items()
             if lev_similarity(plain(text[rid]), plain(text[rej["survivor"]])) < 0.7]  # fmt: skip
    return recall, wrong


def distinct_texts(texts: list[str]) -> list[str]:
    seen, out = set(), []
    for t in texts:
        if plain(t) and plain(t) not in seen:
            seen.add(plain(t))
            out.append(t)
    return out


def test_planted_copies_of_poems_are_found_and_every_removal_is_a_copy(tmp_path):
    poems = distinct_texts([orjson.loads(x)["text"] for x in read_shard_lines(POEMS)])
    records, copies = plant(poems, 100, seed=13)
    shards = write_shards(records, tmp_path / "in")
    dedup(shards, tmp_path / "in", tmp_path)
    recall, wrong = recall_and_precision(tmp_path / "dedup", records, copies)
    assert min(recall.values()) >= 0.95, recall
    assert sum(recall.values()) / len(recall) >= 0.97, recall
    assert wrong == []  # precision 1.0 on every removal, checked by an independent similarity


def test_poem_lines_and_instructions_of_10_to_60_characters(tmp_path):
    """Short texts: the couplets of the bundled poems and the seed instructions (10-60 characters)."""
    import json

    lines = [c for p in (orjson.loads(x)["text"] for x in read_shard_lines(POEMS)) for c in p.split("\n")]
    seeds = [r["instruction"] for r in json.loads(SEED.read_text())]
    short = distinct_texts([t for t in lines + seeds if 10 <= len(plain(t)) <= 60])
    assert len(short) > 2000
    records, copies = plant(short, 100, seed=5)
    shards = write_shards(records, tmp_path / "in")
    dedup(shards, tmp_path / "in", tmp_path)
    recall, wrong = recall_and_precision(tmp_path / "dedup", records, copies)
    text = {r["id"]: r["text"] for r in records}
    # what the defaults promise (docs/merge.md): every copy whose exact 3-gram Jaccard is >= 0.5 is found
    _, rejected = kept_and_rejected(tmp_path / "dedup")
    removed = {r["id"] for r in rejected}
    promised = [c for c, b in copies.items() if trigram_jaccard(text[c], text[b]) >= 0.5]
    assert len(promised) >= 0.75 * len(copies), (len(promised), recall)
    assert [c for c in promised if c not in removed and copies[c] not in removed] == []
    for kind in ("punct_add", "punct_del", "suffix"):
        assert recall[kind] >= 0.95, recall
    assert wrong == []


def read_shard_lines(path: Path) -> list[bytes]:
    import zstandard

    return zstandard.decompress(path.read_bytes(), max_output_size=1 << 30).splitlines()


MUST_STAY_APART = [
    # (a, b): the same words around numbers, operators or names that differ
    ("计算3+5的结果，并详细写出每一步的计算过程。", "计算3-5的结果，并详细写出每一步的计算过程。"),
    ("计算3+5的结果，并详细写出每一步的计算过程。", "计算3+6的结果，并详细写出每一步的计算过程。"),
    ("计算3-5的结果，并详细写出每一步的计算过程。", "计算5-3的结果，并详细写出每一步的计算过程。"),
    ("计算3×5的结果，并详细写出每一步的计算过程。", "计算3÷5的结果，并详细写出每一步的计算过程。"),
    ("圆周率约等于3.14，请用它计算半径为2的圆的面积。", "圆周率约等于314，请用它计算半径为2的圆的面积。"),
    (
        "学习C++编程语言的最佳方法是什么？请给出详细的学习路线。",
        "学习C#编程语言的最佳方法是什么？请给出详细的学习路线。",
    ),
    (
        "请比较x>y和x<y两种情况下函数的单调性，并说明理由。",
        "请比较x>=y和x<=y两种情况下函数的单调性，并说明理由。",
    ),
    (
        "2019年的全国人口普查数据说明了什么问题？请简要分析。",
        "2020年的全国人口普查数据说明了什么问题？请简要分析。",
    ),
    ("把百分之50%的折扣换算成小数，并解释换算的方法。", "把百分之5%的折扣换算成小数，并解释换算的方法。"),
    # code and formulas (the newcomer review): brackets, quotes, primes, factorials, several numbers
    ("arr[i]和arr(i)在MATLAB里有什么区别", "arr(i)和arr[i]在MATLAB里有什么区别"),
    ('print("hello")的输出是什么？请解释原因', "print(hello)的输出是什么？请解释原因"),
    ("求函数f'(x)在x=1处的值并说明理由", "求函数f(x)在x=1处的值并说明理由"),
    ("正则表达式a?b匹配哪些字符串，请举例说明", "正则表达式a b匹配哪些字符串，请举例说明"),
    ("计算(3+5)*2的结果，并写出详细过程", "计算3+5*2的结果，并写出详细过程"),
    ("请计算5!的值，并说明阶乘的定义", "请计算5的值，并说明阶乘的定义"),
    ("会议定在2024-03-15 14:30举行，请写一份通知", "会议定在2024-03-16 14:30举行，请写一份通知"),
    ("计算1+2+3+4的和，并写出详细过程", "计算1+2+3+5的和，并写出详细过程"),
    ("已知x=1, y=2, z=3，求x+y+z的值并写出过程", "已知x=1, y=2, z=4，求x+y+z的值并写出过程"),
    ("用Python写一个快速排序算法的示例代码", "用Java写一个快速排序算法的示例代码"),
    ("请把5kg换算成以磅为单位的重量并说明", "请把5g换算成以磅为单位的重量并说明"),
    ("请解释Python中list和tuple的区别并举例", "请解释Python中list和dict的区别并举例"),
    ("计算x²+1在x等于2时的值，并写出过程", "计算x³+1在x等于2时的值，并写出过程"),
    ("求 x - y 的值，并说明每一步的理由", "求 x y 的值，并说明每一步的理由"),
    ("化简f(g(x))并说明每一步的理由和依据", "化简f(g(x)并说明每一步的理由和依据"),
]
MUST_MERGE = [
    # (a, b, reason): punctuation, width and case, one word changed in a longer instruction
    ("计算3+5的结果，并写出过程。", "计算３＋５的结果，并写出过程。", "duplicate_exact"),
    ("请介绍一下中国古代四大发明及其影响。", "请介绍一下中国古代四大发明及其影响", "duplicate_exact"),
    ("Python 和 Java 有什么区别？", "python和java有什么区别", "near_duplicate"),
    (
        "请简要介绍一下北京故宫的历史和建筑特点。",
        "请简单介绍一下北京故宫的历史和建筑特点。",
        "near_duplicate",
    ),
    (
        "写一篇关于环境保护的短文，字数不少于300字。",
        "写一篇关于环境保护的短文，字数不少于300字！",
        "duplicate_exact",
    ),
    (
        "解释一下牛顿第二定律F=ma的含义，并举一个生活中的例子。",
        "解释一下牛顿第二定律F=ma的含义，举一个生活中的例子。",
        "near_duplicate",
    ),
]


def test_numbers_operators_and_names_keep_texts_apart_and_punctuation_does_not(tmp_path):
    apart = sorted({t for pair in MUST_STAY_APART for t in pair})
    records = [{"id": f"apart{k:02d}", "instruction": t} for k, t in enumerate(apart)]
    for k, (a, b, _) in enumerate(MUST_MERGE):
        records += [
            {"id": f"same{k}a", "instruction": a, "score": 0.9},
            {"id": f"same{k}b", "instruction": b},
        ]
    shards = write_shards(records, tmp_path / "in", shards=2)
    dedup(shards, tmp_path / "in", tmp_path, key="instruction")
    kept, rejected = kept_and_rejected(tmp_path / "dedup")
    assert {r["id"] for r in kept} >= {f"apart{k:02d}" for k in range(len(apart))}
    got = {r["id"]: (r["reject"]["survivor"], r["reject"]["reason"]) for r in rejected}
    assert got == {f"same{k}b": (f"same{k}a", reason) for k, (_, _, reason) in enumerate(MUST_MERGE)}
    for r in rejected:
        assert r["reject"]["similarity"] == (1.0 if r["reject"]["reason"] == "duplicate_exact" else
                                             pytest.approx(trigram_jaccard(r["instruction"], next(
                                                 x["instruction"] for x in records if x["id"] ==
                                                 r["reject"]["survivor"])), abs=1e-3))  # fmt: skip
    # the pairs that stay apart were candidates and were rejected by the check, not missed by chance
    stats = dedup_stats(tmp_path, "dedup-test", config.load().dedup.partitions)
    assert stats["rejected"]["tokens_differ"] >= 10


def test_the_operators_case_through_the_cli(tmp_path, capsys):
    """`dedup-operators/` of the integrity cases: a filter-less run with merge keeps both; a text that is
    only punctuation is rejected as no_content; a punctuation variant is removed naming its survivor."""
    from kun_hpc import cli

    folder = tmp_path / "ops"
    folder.mkdir()
    rows = [("add", "计算3+5的结果，并写出过程。"), ("sub", "计算3-5的结果，并写出过程。"), ("dot", "。"),
            ("dot2", "。"), ("add2", "计算3+5的结果并写出过程")]  # fmt: skip
    (folder / "ops.jsonl").write_text(
        "".join(orjson.dumps({"id": k, "text": t}).decode() + "\n" for k, t in rows)
    )
    run = tmp_path / "run"
    corpus = f"corpora=[{{name: ops, format: jsonl, paths: [{folder}], id_field: id}}]"
    assert cli.main(["run", f"run.dir={run}", "executor.kind=inline", "pipeline.stages=[]", corpus]) == 0
    kept, rejected = kept_and_rejected(run / "merge" / "dedup-text")
    assert sorted(r["id"].rsplit("/", 1)[-1] for r in kept) == ["add", "sub"]
    why = {r["id"].rsplit("/", 1)[-1]: r["reject"] for r in rejected}
    assert {k: v["reason"] for k, v in why.items()} == {"dot": "no_content", "dot2": "no_content",
                                                      "add2": "near_duplicate"}  # fmt: skip
    assert why["add2"]["survivor"].endswith("/add") and why["add2"]["similarity"] == 1.0
    assert "only punctuation" in why["dot"]["detail"]
    report = orjson.loads((run / "merge" / "report" / "report.json").read_bytes())
    step = next(r for r in report["funnel"] if r["step"] == "merge-dedup-text")
    assert step["rejected"] == {"no_content": 2, "near_duplicate": 1}
    assert report["dedup"]["merge-dedup-text"]["removed"] == {"near_duplicate": 1}
    import datasets

    d = datasets.load_dataset("parquet", data_files=str(run / "merge" / "dataset" / "parquet" / "*.parquet"))
    rows_by_id = {r["id"].rsplit("/", 1)[-1]: r for r in d["train"]}
    assert (rows_by_id["add"]["dup_count"], rows_by_id["add"]["dup_corpora"]) == (1, ["ops"])
    assert (rows_by_id["sub"]["dup_count"], rows_by_id["sub"]["dup_corpora"]) == (0, [])
    # the removals can be read like a stage's: kun-hpc inspect RUN merge-dedup-text --reason ...
    capsys.readouterr()
    assert cli.main(["inspect", str(run), "merge-dedup-text", "--reason", "near_duplicate", "--json"]) == 0
    shown = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["reject"]["survivor"].rsplit("/", 1)[-1] for r in shown] == ["add"]


def test_empty_and_missing_keys_are_rejected_as_no_content(tmp_path):
    recs = [{"id": "a", "text": "。"}, {"id": "b", "text": " \u3000！？…… "}, {"id": "c"},
            {"id": "d", "text": "有内容。"}, {"id": "e", "text": "+"}]  # fmt: skip
    shards = write_shards(recs, tmp_path / "in", shards=1)
    _, markers = dedup(shards, tmp_path / "in", tmp_path)
    kept, rejected = kept_and_rejected(tmp_path / "dedup")
    assert sorted(r["id"] for r in kept) == ["d", "e"]  # a symbol is content
    assert {r["id"]: r["reject"]["reason"] for r in rejected} == dict.fromkeys("abc", "no_content")
    assert "has no text" in next(r for r in rejected if r["id"] == "c")["reject"]["detail"]
    m = markers[0]
    assert (m["in"], m["out"], m["rejected"]) == (5, 2, {"no_content": 3})


def test_survivors_count_their_copies_by_corpus_across_passes_and_chains_are_not_followed(tmp_path):
    base = "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"
    recs = [
        {"id": "keep", "corpus": "wudao", "text": base, "score": 0.9},
        {"id": "exact", "corpus": "skypile", "text": base.replace("，", ","), "score": 0.5},
        {"id": "near", "corpus": "wanjuan", "text": base.replace("啼", "鸣"), "score": 0.4},
        # a ~ b ~ c: "far" is similar to "mid" but not to "a"; "mid" goes, "far" stays
        {"id": "a", "corpus": "wudao", "text": "一二三四五六七八九十甲乙丙丁", "score": 0.9},
        {"id": "mid", "corpus": "wudao", "text": "一二三四五六七八九十甲乙丙丁戊己庚", "score": 0.5},
        {
            "id": "far",
            "corpus": "wudao",
            "text": "一二三四五六七八九十甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申",
            "score": 0.1,
        },
    ]
    assert (
        trigram_jaccard(recs[3]["text"], recs[4]["text"])
        >= 0.5
        > trigram_jaccard(recs[3]["text"], recs[5]["text"])
    )
    assert trigram_jaccard(recs[4]["text"], recs[5]["text"]) >= 0.5
    shards = write_shards(recs, tmp_path / "in", shards=2)
    job, _ = dedup(shards, tmp_path / "in", tmp_path / "one")
    kept, _ = kept_and_rejected(tmp_path / "one" / "dedup")
    assert sorted(r["id"] for r in kept) == ["a", "far", "keep"]
    survivor = {r["id"]: r for r in kept}
    assert (survivor["keep"]["dup_count"], survivor["keep"]["dup_corpora"]) == (2, ["skypile", "wanjuan"])
    assert (survivor["a"]["dup_count"], survivor["a"]["dup_corpora"]) == (1, ["wudao"])
    assert "dup_count" not in survivor["far"]
    assert dedup_stats(tmp_path / "one", "dedup-test", config.load().dedup.partitions)["kept_apart"] == 1
    # a second pass over the first one's output (as merge after raw): counts add up
    more = [{"id": "late", "corpus": "skypile", "text": base + "！", "score": 0.1}]
    shards2 = [*map(Path, job.outputs), *write_shards(more, tmp_path / "one" / "dedup" / "late", shards=1)]
    dedup(shards2, tmp_path / "one" / "dedup", tmp_path / "two")
    kept2, _ = kept_and_rejected(tmp_path / "two" / "dedup")
    keep = next(r for r in kept2 if r["id"] == "keep")
    assert (keep["dup_count"], keep["dup_corpora"]) == (3, ["skypile", "wanjuan"])


def test_the_docs_tables_of_keys_and_s_curves_are_the_code_s():
    from kun_hpc.merge.minhash import candidate_probability
    from kun_hpc.merge.normalize import make_normalizer

    doc = (REPO / "docs" / "merge.md").read_text()
    cfg = config.load().dedup
    normalize = make_normalizer(cfg.normalize)
    keys = re.findall(r"^\| `([^`]+)` \| (?:`([^`]*)`|\(empty[^|]*) \|$", doc, flags=re.M)
    assert len(keys) >= 10  # the table is found and read
    for text, key in keys:
        assert normalize(text) == key, text
    curve = re.findall(r"^\| (0\.\d) \| (\d\.\d{3}) \| (\d\.\d{3}) \|$", doc, flags=re.M)
    assert len(curve) == 8
    rows, long_rows = cfg.permutations // cfg.bands, cfg.permutations // cfg.long_bands
    assert f"({cfg.bands} x {rows})" in doc and f"({cfg.long_bands} x {long_rows})" in doc
    for s, short, long in curve:
        assert float(short) == round(candidate_probability(float(s), cfg.bands, rows), 3)
        assert float(long) == round(candidate_probability(float(s), cfg.long_bands, long_rows), 3)


def test_a_rerun_with_fewer_partitions_ignores_the_pairs_an_earlier_run_left(tmp_path):
    same = [{"id": f"s{i}", "text": "同一首诗，同一段文字。"} for i in range(6)]
    shards = write_shards(same, tmp_path / "in", shards=2)
    dedup(shards, tmp_path / "in", tmp_path, "dedup.partitions=7")
    assert len(kept_and_rejected(tmp_path / "dedup")[1]) == 5
    distinct = [
        {"id": f"d{i}", "text": f"第{i}段完全不同的文字：{'甲乙丙丁戊己庚辛'[i]}。"} for i in range(6)
    ]
    write_shards(distinct, tmp_path / "in", shards=2)  # the same paths, other records
    dedup(shards, tmp_path / "in", tmp_path, "dedup.partitions=3")
    kept, rejected = kept_and_rejected(tmp_path / "dedup")
    assert (len(kept), rejected) == (6, [])


def test_copies_that_met_only_through_a_third_in_a_big_bucket_are_removed(tmp_path):
    """400 one-character variants of a question and the question with a suffix, which survives (longest):
    a bucket of more than 8 is paired as a star and a chain, so most variants have no verified pair with
    the survivor; the cluster phase checks them against it."""
    base = "请详细介绍一下中国古代四大发明的历史背景及其对世界文明的深远影响"
    rng = random.Random(3)
    recs = []
    for k in range(400):
        chars = list(base)
        i = rng.randrange(2, len(chars))
        chars[i] = next(c for c in iter(lambda: chr(rng.randrange(0x4E00, 0x9FA5)), None) if c != chars[i])
        recs.append({"id": f"v{k:03d}", "text": "".join(chars)})
    recs.append({"id": "z-survivor", "text": base + "请回答"})
    shards = write_shards(recs, tmp_path / "in", shards=8)
    dedup(shards, tmp_path / "in", tmp_path)
    kept, rejected = kept_and_rejected(tmp_path / "dedup")
    text = {r["id"]: r["text"] for r in recs}
    expected = {r["id"] for r in recs if r["id"] != "z-survivor"
                and trigram_jaccard(r["text"], text["z-survivor"]) < 0.5}  # fmt: skip
    assert {r["id"] for r in kept} - {"z-survivor"} <= expected | {r["id"] for r in kept if r["text"] == base}
    assert len(kept) <= 1 + len(expected)
    assert all(r["reject"]["survivor"] == "z-survivor" for r in rejected if r["text"] != base)
    stats = dedup_stats(tmp_path, "dedup-test", config.load().dedup.partitions)
    assert stats["indirect_checks"] > 0 and stats["kept_apart"] == 0


def test_bucket_tasks_hold_few_files_open_and_close_them(tmp_path, monkeypatch):
    from kun_hpc.merge.dedup import verify as dedup_module

    recs = [{"id": f"r{i}", "text": f"同一首诗，第{i % 3}段文字。"} for i in range(60)]
    shards = write_shards(recs, tmp_path / "in", shards=12)
    dedup(shards, tmp_path / "in", tmp_path / "wide")
    monkeypatch.setattr(dedup_module, "OPEN_SHARDS", 2)
    before = len(os.listdir("/proc/self/fd"))
    job, _ = dedup(shards, tmp_path / "in", tmp_path / "narrow")
    assert len(os.listdir("/proc/self/fd")) == before
    assert [file_sha256(p) for p in job.outputs] == [
        file_sha256(tmp_path / "wide" / "dedup" / p.name) for p in map(Path, job.outputs)
    ]
