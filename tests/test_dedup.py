"""Dedup on real text: the overlapping sample corpora, planted near-duplicates, task counts, bad input, and
the same dedup on the sandbox Slurm cluster."""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from kun_hpc import config
from kun_hpc.cluster.executors import InlineExecutor
from kun_hpc.cluster.phases import run_phases
from kun_hpc.io.quarantine import read_quarantine
from kun_hpc.io.shards import ZstdJsonlWriter, file_sha256, list_shards, read_shard
from kun_hpc.merge.dedup import dedup_phases, make_job, settings_of
from kun_hpc.merge.minhash import MinHasher
from kun_hpc.merge.raw import run_dedup_raw
from kun_hpc.stages.shard import run_shard
from tests.conftest import REPO, sample_overrides, start_sandbox


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
    run_shard(cfg, InlineExecutor(), run / "logs")
    run_dedup_raw(cfg, InlineExecutor())
    return run


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
    from kun_hpc.merge.raw import PHASE
    from kun_hpc.stages.base import read_marker

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
    run_shard(cfg, InlineExecutor(), run / "logs")
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
    from kun_hpc.cluster.executors import make_executor
    from kun_hpc.cluster.slurm import read_registry

    run_shard(cfg, InlineExecutor(), tmp_path / "logs")
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
