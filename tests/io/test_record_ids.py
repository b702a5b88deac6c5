"""Record ids are keys across a run (issue 12, kind 3): repeats within a unit and across units are
quarantined as ``duplicate_id`` (the first stays), counted in the manifest and the report, hash collisions
remove nothing, and the dataset's ``id`` column is unique."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import orjson
import pytest

from kun_hpc import cli
from kun_hpc.io import record_ids
from kun_hpc.io.quarantine import read_quarantine
from kun_hpc.io.record_ids import repeated_across
from kun_hpc.io.shards import list_shards, read_manifest, read_shard


def expected_repeats(arrays: list[list[int]]) -> list[list[int]]:
    """The indexes, per unit, of values seen before in unit order (the definition, computed plainly)."""
    seen: set[int] = set()
    out = []
    for a in arrays:
        mine = []
        for i, v in enumerate(a):
            if v in seen:
                mine.append(i)
            seen.add(v)
        out.append(mine)
    return out


@pytest.mark.parametrize("per_pass", [1 << 24, 1000, 7])
def test_repeated_across_finds_exactly_the_later_copies(per_pass):
    rng = random.Random(per_pass)
    pool = [rng.getrandbits(64) for _ in range(3000)]
    arrays = [[rng.choice(pool) for _ in range(rng.randint(0, 900))] for _ in range(6)]
    arrays = [list(dict.fromkeys(a)) for a in arrays]  # a unit's own repeats are gone before this step
    got = repeated_across([np.array(a, dtype=np.uint64) for a in arrays], max_ids_per_pass=per_pass)
    assert [g.tolist() for g in got] == expected_repeats(arrays)
    assert sum(len(g) for g in got) > 100  # the pool is small: many repeats across units


def shard(tmp_path: Path, name: str, fmt: str, files: dict[str, str], *extra: str) -> Path:
    folder = tmp_path / f"in-{name}"
    folder.mkdir()
    for fname, body in files.items():
        (folder / fname).write_text(body, encoding="utf-8")
    run = tmp_path / f"run-{name}"
    args = [
        f"run.dir={run}",
        "executor.kind=inline",
        f"corpora=[{{name: {name}, format: {fmt}, paths: [{folder}]}}]",
        *extra,
    ]
    assert cli.main(["shard", *args]) == 0
    return run / "shards" / name


def kept_and_quarantined(out: Path) -> tuple[list[dict], list[dict]]:
    kept = [r for p in list_shards(out) for r in read_shard(p)]
    quarantined = [q for p in sorted((out / "quarantine").glob("*.zst")) for q in read_quarantine(p)]
    return kept, quarantined


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_ids_repeated_within_and_across_files_are_quarantined_naming_the_first(tmp_path):
    a = [{"id": i, "text": f"甲文件第{i}篇。"} for i in (1, 2, 1, 3, 2)]  # 1 and 2 again at lines 3 and 5
    b = [{"id": i, "text": f"乙文件第{i}篇。"} for i in (3, 4, 5, 4)]  # 3: across files; 4: within
    out = shard(
        tmp_path, "mine", "jsonl", {"a.jsonl": jsonl(a), "b.jsonl": jsonl(b)}, "corpora.0.id_field=id"
    )
    kept, quarantined = kept_and_quarantined(out)
    assert [r["id"] for r in kept] == ["mine/1", "mine/2", "mine/3", "mine/4", "mine/5"]
    assert [r["text"] for r in kept] == [
        "甲文件第1篇。",
        "甲文件第2篇。",
        "甲文件第3篇。",
        "乙文件第4篇。",
        "乙文件第5篇。",
    ]
    assert sorted((q["source"], q["position"], q["reason"], q["detail"]) for q in quarantined) == [
        ("a.jsonl", "line 3", "duplicate_id", "id 'mine/1' already at a.jsonl:line 1"),
        ("a.jsonl", "line 5", "duplicate_id", "id 'mine/2' already at a.jsonl:line 2"),
        ("b.jsonl", "line 1", "duplicate_id", "id 'mine/3' already at a.jsonl:line 4"),
        ("b.jsonl", "line 4", "duplicate_id", "id 'mine/4' already at b.jsonl:line 2"),
    ]
    assert {q["preview"] for q in quarantined} == {
        "甲文件第1篇。",
        "甲文件第2篇。",
        "乙文件第3篇。",
        "乙文件第4篇。",
    }
    m = read_manifest(out)
    assert m["read"] == 9 and m["records"] == 5 and m["quarantined"] == {"duplicate_id": 4}
    assert sum(s["records"] for s in m["shards"]) == 5


def test_identical_texts_without_ids_share_a_content_id_and_only_the_first_stays(tmp_path):
    rows = [{"text": t} for t in ("同一段话。", "另一段话。", "同一段话。")]
    out = shard(tmp_path, "sky", "skypile", {"x.jsonl": jsonl(rows[:2]), "y.jsonl": jsonl(rows)})
    kept, quarantined = kept_and_quarantined(out)
    assert [r["text"] for r in kept] == ["同一段话。", "另一段话。"]
    assert [(q["source"], q["position"]) for q in quarantined] == [
        ("y.jsonl", "line 1"),
        ("y.jsonl", "line 2"),
        ("y.jsonl", "line 3"),
    ]
    assert len({r["id"] for r in kept}) == len(kept)


def test_a_hash_collision_removes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(record_ids, "_hash64", lambda data: 42)  # every id of every unit collides
    rows = {
        f"{k}.jsonl": jsonl([{"id": f"{k}{i}", "text": f"第{k}{i}段。"} for i in range(4)]) for k in "abc"
    }
    out = shard(tmp_path, "col", "jsonl", rows, "corpora.0.id_field=id")
    kept, quarantined = kept_and_quarantined(out)
    assert len(kept) == 12 and quarantined == []


@pytest.mark.slow
def test_wudao_files_whose_native_ids_repeat_give_a_dataset_with_unique_ids(tmp_path):
    """The shared case wudao-dup-ids, without uniqueKey in one file: both files' records reach the dataset,
    under distinct ids."""

    def doc(i: int, text: str, key: str | None) -> dict:
        return {"id": i, **({"uniqueKey": key} if key else {}), "title": f"标题{i}", "content": text}

    texts = [
        "今天天气很好，我们一起去公园散步吧。",
        "这本书讲述了一个普通人在大城市里奋斗的故事。",
        "请把窗户关上，外面的风太大了。",
    ]
    others = [
        "山间的小路弯弯曲曲，两旁开满了野花。",
        "他每天清晨六点起床，先跑步再读书。",
        "这家餐馆的招牌菜是红烧肉和清蒸鱼。",
    ]
    files = {
        "part-0000.json": json.dumps([doc(i, t, f"uk{i}") for i, t in enumerate(texts)], ensure_ascii=False),
        "part-0001.json": json.dumps([doc(i, t, None) for i, t in enumerate(others)], ensure_ascii=False),
    }
    folder = tmp_path / "wudao"
    folder.mkdir()
    for name, body in files.items():
        (folder / name).write_text(body, encoding="utf-8")
    run = tmp_path / "run"
    args = [
        f"run.dir={run}",
        "executor.kind=inline",
        f"corpora=[{{name: wudao, format: wudao, paths: [{folder}]}}]",
        "pipeline.stages=[tests.stages_for_tests:Synth]",
        "pipeline.options.synth.chars=40",
    ]
    assert cli.main(["run", *args]) == 0
    rows = [
        r for p in sorted((run / "merge" / "dataset" / "jsonl").glob("*.jsonl.zst")) for r in read_shard(p)
    ]
    ids = [r["id"] for r in rows]
    assert len(rows) == 6 and len(set(ids)) == 6
    report = orjson.loads((run / "merge" / "report" / "report.json").read_bytes())
    assert report["funnel"][0]["in"] == 6 and report["funnel"][-1]["out"] == 6


def test_files_of_the_same_name_in_two_folders_are_told_apart(tmp_path):
    """Records name their file relative to the corpus's common folder: WuDao ids of same-named files differ,
    and a repeat at the same line of a same-named file is still a repeat."""
    root = tmp_path / "in"
    for sub, text in (("a", "甲"), ("b", "乙")):
        (root / "wd" / sub).mkdir(parents=True)
        docs = [{"id": i, "content": f"{text}文件第{i}篇。"} for i in range(2)]
        (root / "wd" / sub / "part-0000.json").write_text(
            json.dumps(docs, ensure_ascii=False), encoding="utf-8"
        )
        (root / "jl" / sub).mkdir(parents=True)
        (root / "jl" / sub / "x.jsonl").write_text(
            jsonl([{"id": i, "text": f"{text}第{i}行。"} for i in range(2)]), encoding="utf-8"
        )
        (root / "hs" / sub).mkdir(parents=True)
        (root / "hs" / sub / "x.jsonl").write_text(jsonl([{"text": "同一段话。"}]), encoding="utf-8")

    def run(name: str, fmt: str, *extra: str) -> tuple[list[dict], list[dict]]:
        folder = root / name
        args = [f"run.dir={tmp_path / name}", "executor.kind=inline"]
        args += [f"corpora=[{{name: {name}, format: {fmt}, paths: [{folder}]}}]", *extra]
        assert cli.main(["shard", *args]) == 0
        return kept_and_quarantined(tmp_path / name / "shards" / name)

    kept, quarantined = run("wd", "wudao")
    assert [(r["id"], r["src"].split(":")[0]) for r in kept] == [
        ("wd/a/part-0000.json:0", "a/part-0000.json"),
        ("wd/a/part-0000.json:1", "a/part-0000.json"),
        ("wd/b/part-0000.json:0", "b/part-0000.json"),
        ("wd/b/part-0000.json:1", "b/part-0000.json"),
    ]
    assert quarantined == []
    kept, quarantined = run("jl", "jsonl", "corpora.0.id_field=id")
    assert [r["text"] for r in kept] == ["甲第0行。", "甲第1行。"]
    assert [(q["source"], q["position"], q["detail"]) for q in quarantined] == [
        ("b/x.jsonl", "line 1", "id 'jl/0' already at a/x.jsonl:line 1"),
        ("b/x.jsonl", "line 2", "id 'jl/1' already at a/x.jsonl:line 2"),
    ]
    kept, quarantined = run("hs", "skypile")
    assert [r["src"] for r in kept] == ["a/x.jsonl:line 1"]
    assert [(q["source"], q["reason"]) for q in quarantined] == [("b/x.jsonl", "duplicate_id")]
