"""``kun-hpc inspect RUN STAGE``: seeded samples of kept and rejected records of real runs (the filter on the
bundled sample; Label -> rules with the tiny model), shown beside their unit; errors that say what exists."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import orjson
import pytest

from kun_hpc import cli
from kun_hpc.inspect_run import ANY, InspectError, clip, inspect_stage, reservoir
from kun_hpc.io.shards import iter_shard_lines, list_shards, read_shard
from tests.conftest import SAMPLE, sample_overrides

LLM = ("label", "point", "answer")


@pytest.fixture(scope="module")
def filter_run(tmp_path_factory, tiny_model) -> Path:
    run = tmp_path_factory.mktemp("inspect") / "filter run"
    args = sample_overrides(
        run,
        "executor.kind=inline",
        "pipeline.stages=[filter]",
        f"filter.tokenizer={tiny_model}",
        "shard.records_per_shard=500",
    )
    assert cli.main(["run", *args]) == 0
    return run


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, tiny_model) -> Path:
    """Filter -> Label -> Point -> Answer -> rules over 16 SkyPile records, tiny model on transformers."""
    tmp = tmp_path_factory.mktemp("inspect-chain")
    data = tmp / "data"
    data.mkdir()
    lines = (SAMPLE / "skypile" / "2020-40_zh_head_0000.jsonl").read_bytes().splitlines()[:16]
    (data / "part.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run = tmp / "run"
    args = [
        f"run.dir={run}", "executor.kind=inline",
        f"corpora=[{{name: web, format: skypile, paths: [{data}]}}]",
        "pipeline.stages=[filter,label,point,answer,rules]", "pipeline.chunk_records=8",
        *(f"{s}.engine.{k}" for s in LLM for k in (f"model={tiny_model}", "backend=transformers",
                                                  "dtype=float32")),
        *(f"{s}.sampling.max_new_tokens=8" for s in LLM), *(f"{s}.sampling.temperature=0" for s in LLM),
        "label.reject_truncated=false", "answer.reject_truncated=false", "point.mode=calibrated",
    ]  # fmt: skip
    assert cli.main(["run", *args]) == 0
    return run


def markers(run: Path, stage: str) -> list[dict]:
    return [orjson.loads(p.read_bytes()) for p in sorted((run / "done" / stage).glob("*.json"))]


def at(root: Path, where: str) -> dict:
    """The record a sample's ``file:line`` points at."""
    name, _, line = where.rpartition(":")
    return orjson.loads(list(iter_shard_lines(root / name))[int(line) - 1])


def test_reservoir_is_seeded_bounded_and_uniform():
    assert reservoir(iter(range(3)), 5, random.Random(0)) == ([0, 1, 2], 3)
    picks, seen = reservoir(iter(range(1000)), 4, random.Random(7))
    assert seen == 1000 and len(picks) == 4 and len(set(picks)) == 4
    assert picks == reservoir(iter(range(1000)), 4, random.Random(7))[0]
    counts = Counter(x for seed in range(3000) for x in reservoir(iter(range(10)), 3, random.Random(seed))[0])
    assert set(counts) == set(range(10))
    assert all(800 <= c <= 1000 for c in counts.values()), counts  # expected 900 each


@pytest.mark.slow
def test_kept_records_are_a_seeded_sample_of_the_stage_output(filter_run):
    result = inspect_stage(filter_run, "filter", n=6, seed=0)
    kept = sum(m["units"]["out"] for m in markers(filter_run, "filter"))
    assert result.matched == kept and len(result.samples) == 6 and not result.rejected
    for s in result.samples:  # each sample is the record its file:line holds, from the kept shards
        assert "reject" not in s.record
        assert s.record == at(result.root, s.where(result.root))
        assert s.path.relative_to(result.root).parts[0] in ("wudao", "wanjuan", "skypile")
    again = inspect_stage(filter_run, "filter", n=6, seed=0)
    assert [s.record["id"] for s in again.samples] == [s.record["id"] for s in result.samples]
    other = inspect_stage(filter_run, "filter", n=6, seed=1)
    assert [s.record["id"] for s in other.samples] != [s.record["id"] for s in result.samples]
    one = inspect_stage(filter_run, "filter", n=50, corpus="wanjuan")
    assert {s.record["corpus"] for s in one.samples} == {"wanjuan"} and one.matched < kept


@pytest.mark.slow
def test_rejected_by_reason_and_unknown_reasons_list_what_exists(filter_run):
    by_reason = Counter()
    for m in markers(filter_run, "filter"):
        by_reason.update(m["units"]["rejected"])
    assert by_reason  # the sample has a few non-Chinese and short units
    reason, count = by_reason.most_common(1)[0]
    result = inspect_stage(filter_run, "filter", reason=reason, n=100)
    assert result.matched == count == len(result.samples)
    assert all(s.record["reject"] == {**s.record["reject"], "stage": "filter", "reason": reason}
               for s in result.samples)  # fmt: skip
    assert result.reasons == by_reason
    assert inspect_stage(filter_run, "filter", reason=ANY, n=1000).matched == sum(by_reason.values())
    with pytest.raises(InspectError) as e:
        inspect_stage(filter_run, "filter", reason="no_such_reason")
    assert "no_such_reason" in str(e.value) and f"{reason} ({count})" in str(e.value)


@pytest.mark.slow
def test_cli_shows_the_unit_beside_what_each_stage_added(chain_run, capsys):
    label_kept = [r for p in list_shards(chain_run / "stages" / "label" / "web") for r in read_shard(p)]
    assert label_kept, "the tiny model wrote no instruction: nothing to inspect"
    assert cli.main(["inspect", str(chain_run), "label", "-n", "2", "--max-chars", "30"]) == 0
    out = capsys.readouterr().out
    assert "unit (text)" in out and "what label added" in out and "instruction:" in out
    assert "chars]" in out  # long texts are cut, saying by how much
    shown = inspect_stage(chain_run, "label", n=2)
    assert shown.samples[0].record["text"][:10] in out.replace("\n", "")  # the unit's own text
    assert cli.main(["inspect", str(chain_run), "point", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "verdict:" in out and "score:" in out and "instruction:" in out
    rules = Counter(r for m in markers(chain_run, "rules") for r in m["units"]["rejected"])
    assert rules  # the tiny model's 8-token answers are too short for Kun's post-rules
    reason = rules.most_common(1)[0][0]
    assert cli.main(["inspect", str(chain_run), "rules", "--reason", reason]) == 0
    out = capsys.readouterr().out
    assert "rejected: reason, detail" in out and reason in out and "answer:" in out
    assert cli.main(["inspect", str(chain_run), "label", "--reason", "nope"]) == 1
    assert "reasons found" in capsys.readouterr().err


def test_json_lines_are_whole_records_with_their_source(chain_run, capsys):
    assert cli.main(["inspect", str(chain_run), "answer", "-n", "3", "--json", "--seed", "4"]) == 0
    rows = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows and len(rows) <= 3
    root = chain_run / "stages" / "answer"
    for row in rows:
        where = row.pop("_source")
        assert row == at(root, where) and "answer" in row and "instruction" in row


@pytest.mark.slow
def test_raw_shards_and_errors_that_say_what_exists(filter_run, tmp_path, capsys):
    raw = inspect_stage(filter_run, "shard", n=3, corpus="skypile")
    assert len(raw.samples) == 3 and raw.matched == 1004  # the sample's SkyPile records
    with pytest.raises(InspectError, match="rejects nothing"):
        inspect_stage(filter_run, "shard", reason="x")
    with pytest.raises(InspectError, match="its stages: shard, filter"):
        inspect_stage(filter_run, "label")
    with pytest.raises(InspectError, match="its corpora: wudao, wanjuan, skypile"):
        inspect_stage(filter_run, "filter", corpus="c4")
    assert cli.main(["inspect", str(tmp_path), "filter"]) == 1
    assert "not a run folder" in capsys.readouterr().err


def test_clip_says_how_much_it_cut():
    assert clip("abcdef", 10) == "abcdef" and clip("abcdef", 0) == "abcdef"
    assert clip("abcdef", 2) == "ab … [+4 chars]"
