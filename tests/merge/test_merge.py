"""Merge through real run folders and markers: `kun-hpc run` on the sample with a pair-making stage, the
final dedup, the dataset loaded with `datasets`, the card and the report; incomplete grids."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.merge.assemble import MergeInputs, MergeResult
from kun_hpc.merge.normalize import make_normalizer
from tests.conftest import sample_overrides

SYNTH = "pipeline.stages=[tests.stages_for_tests:Synth]"


def args(run: Path, *extra: str) -> list[str]:
    return sample_overrides(run, "executor.kind=inline", "shard.records_per_shard=400", *extra)


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pairs")
    assert cli.main(["run", *args(run, SYNTH, "dedup.raw=true")]) == 0  # run merges at the end
    return run


def load(run: Path, fmt: str):
    import datasets

    ds = run / "merge" / "dataset"
    files = str(ds / ("parquet/*.parquet" if fmt == "parquet" else "jsonl/*.jsonl.zst"))
    return datasets.load_dataset(fmt, data_files=files, split="train")


@pytest.mark.slow
def test_the_loaded_dataset_matches_the_report(pairs_run):
    report = orjson.loads((pairs_run / "merge" / "report" / "report.json").read_bytes())
    for fmt in ("parquet", "json"):
        d = load(pairs_run, fmt)
        assert d.num_rows == report["dataset"]["rows"] == report["funnel"][-1]["out"]
        assert {"instruction", "output", "id", "corpus", "score", "prov"} <= set(d.column_names)
        by_corpus = {c: d["corpus"].count(c) for c in set(d["corpus"])}
        assert by_corpus == report["dataset"]["by_corpus"]
    assert orjson.loads(d[0]["prov"])["synth"]["config_hash"]
    for name in ("report.md", "report.html", "funnel.png", "lengths.png", "scores.png"):
        assert (pairs_run / "merge" / "report" / name).stat().st_size > 0
    card = (pairs_run / "merge" / "dataset" / "README.md").read_text()
    assert "CC BY-SA 4.0" in card and f"{d.num_rows:,}" in card


@pytest.mark.slow
def test_funnel_chains_and_keeps_the_accounting(pairs_run):
    report = orjson.loads((pairs_run / "merge" / "report" / "report.json").read_bytes())
    steps = [r["step"] for r in report["funnel"]]
    assert steps == ["shard", "dedup-raw", "synth", "merge-dedup-instruction", "dataset"]
    rows = report["funnel"]
    for before, after in itertools.pairwise(rows):
        assert after["in"] == before["out"], (before["step"], after["step"])
    for r in rows:
        assert r["in"] == r["out"] + sum(r["rejected"].values()) + sum(r["quarantined"].values())
    assert rows[1]["rejected"] == {"duplicate_exact": 400}
    assert rows[3]["rejected"].get("duplicate_exact", 0) > 0  # texts opening alike share an instruction


@pytest.mark.slow
def test_final_dedup_by_instruction_keeps_the_highest_score(pairs_run):
    d = load(pairs_run, "parquet")
    norm = make_normalizer(config.load().dedup.normalize)
    keys = [norm(i) for i in d["instruction"]]
    assert len(keys) == len(set(keys))
    kept = dict(zip(d["id"], d["score"], strict=True))
    root = pairs_run / "merge" / "dedup-instruction" / "rejected"
    rejected = [r for p in list_shards(root) for r in read_shard(p)]
    assert rejected
    for r in rejected:
        assert r["reject"]["survivor"] in kept
        assert kept[r["reject"]["survivor"]] >= r["score"]
        assert r["reject"]["stage"] == "merge-dedup-instruction"


@pytest.mark.slow
def test_merge_again_by_pair_removes_less(pairs_run):
    assert cli.main(["merge", str(pairs_run), "merge.dedup_by=[pair]"]) == 0
    by_pair = orjson.loads((pairs_run / "merge" / "report" / "report.json").read_bytes())
    assert by_pair["funnel"][-2]["step"] == "merge-dedup-pair"
    assert by_pair["funnel"][-2]["rejected"] == {}  # the answer is the (raw-deduplicated) text
    assert load(pairs_run, "json").num_rows == by_pair["dataset"]["rows"] == by_pair["funnel"][2]["out"]
    assert cli.main(["merge", str(pairs_run)]) == 0  # back to the run's own config


@pytest.mark.slow
def test_merge_refuses_an_incomplete_grid_unless_allow_partial(tmp_path, capsys):
    assert cli.main(["run", *args(tmp_path, SYNTH)]) == 0
    grid = plan_grid(config.load(None, args(tmp_path, SYNTH)))
    gone = grid.units["synth"][1]
    (tmp_path / "done" / "synth" / f"{gone.name}.json").unlink()
    assert cli.main(["merge", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "incomplete" in err and f"synth/{gone.name}" in err and "allow_partial=true" in err
    assert cli.main(["merge", str(tmp_path), "allow_partial=true"]) == 0
    assert f"synth/{gone.name}" in capsys.readouterr().err
    report = orjson.loads((tmp_path / "merge" / "report" / "report.json").read_bytes())
    assert report["missing"] == [f"synth/{gone.name}"]
    missing_records = sum(1 for t in gone.shards for _ in read_shard(t.input))
    done = [t for u in grid.units["synth"] if u is not gone for t in u.shards]
    complete = sum(1 for t in done for _ in read_shard(t.input))
    assert missing_records > 0
    assert report["funnel"][-2]["in"] == complete  # the merge read only the complete groups
    assert load(tmp_path, "parquet").num_rows == report["dataset"]["rows"]
    assert "Partial" in (tmp_path / "merge" / "dataset" / "README.md").read_text()


@pytest.mark.slow
def test_a_run_without_pair_stages_merges_as_text(tmp_path):
    assert cli.main(["run", *args(tmp_path)]) == 0
    d = load(tmp_path, "json")
    assert "text" in d.column_names and "instruction" not in d.column_names
    assert d.num_rows == 3504 - 400  # the planted cross-corpus duplicates, removed at merge by text


@pytest.mark.slow
def test_a_run_whose_last_stage_keeps_nothing_merges_to_an_empty_dataset(tmp_path, capsys):
    run = tmp_path / "empty"
    extra = (SYNTH, "pipeline.options.synth.reject_all=true")
    assert cli.main(["run", *args(run, *extra)]) == 0  # an empty dataset is a result, not an error
    # the last line says so, and why, and where the funnel is (issue 16)
    assert (
        f"kun-hpc merge: 0 records in {run / 'merge' / 'dataset'} (warning: the dataset is empty: the last "
        "stage kept no record: every record was rejected or quarantined on the way (kun-hpc status RUN "
        "shows the stages' funnel; each stage's rejected/ folder says why)); the funnel, step by step: "
        f"{run / 'merge' / 'report' / 'report.md'}"
    ) in capsys.readouterr().err
    report = orjson.loads((run / "merge" / "report" / "report.json").read_bytes())
    assert report["dataset"]["rows"] == 0
    synth = next(r for r in report["funnel"] if r["step"] == "synth")
    assert synth["out"] == 0 and synth["rejected"] == {"synth_rejected": synth["in"]} and synth["in"] > 0


@pytest.mark.slow
def test_the_dataset_keeps_the_unit_text_and_the_corpora_meta_fields(pairs_run, sample):
    # WuDao's native objects by their text: the meta fields kun-hpc keeps (title, dataType, uniqueKey)
    native: dict[str, list[dict]] = {}
    for path in sorted((sample / "wudao").glob("*.json")):
        for obj in orjson.loads(path.read_bytes()):
            meta = {k: obj[k] for k in ("title", "dataType", "uniqueKey") if obj.get(k) not in (None, "")}
            native.setdefault(obj["content"], []).append(meta)
    source = {r["id"]: r["text"] for p in list_shards(pairs_run / "shards") for r in read_shard(p)}
    jsonl = [r for p in list_shards(pairs_run / "merge" / "dataset" / "jsonl") for r in read_shard(p)]
    parquet = load(pairs_run, "parquet")
    assert len(jsonl) == parquet.num_rows > 0
    for rows in (jsonl, parquet.to_list()):
        for r in rows:
            assert r["unit_text"] == source[r["id"]]  # Synth makes the pair from the shard's text
            meta = orjson.loads(r["meta"])
            if r["corpus"] == "wudao":
                assert meta in native[r["unit_text"]] and meta["uniqueKey"], r["id"]
            else:
                assert meta == {}  # WanJuan and SkyPile keep no native field
    assert sum(r["corpus"] == "wudao" for r in jsonl) > 100


@pytest.mark.slow
def test_jsonl_and_parquet_of_one_merge_load_with_the_same_types(pairs_run):
    import datasets

    ds = pairs_run / "merge" / "dataset"
    features = datasets.load_dataset_builder(str(ds)).info.features  # the card's dataset_info
    files = str(ds / "jsonl/*.jsonl.zst")
    jsonl = datasets.load_dataset("json", data_files=files, features=features, split="train")
    parquet = load(pairs_run, "parquet")
    assert jsonl.features == parquet.features
    assert parquet.features["ppl"].dtype == parquet.features["score"].dtype == "float64"
    assert jsonl["ppl"] == parquet["ppl"] == [None] * parquet.num_rows  # no filter ran: no perplexity
    assert sorted(jsonl["id"]) == sorted(parquet["id"])


def test_an_empty_dataset_names_the_merge_step_that_removed_every_record(tmp_path):
    def apply(n_in: int, n_out: int) -> dict:
        return {"in": n_in, "out": n_out}

    inputs = MergeInputs("pairs", [], tmp_path, "")
    result = MergeResult(
        inputs, [("instruction", [apply(5, 2), apply(3, 1)])], [{"rows": 3}], tmp_path, tmp_path
    )
    assert result.summary().startswith(f"3 records in {tmp_path}")
    gone = [("instruction", [apply(5, 2), apply(3, 1)]), ("pair", [apply(2, 0), apply(1, 0)])]
    result = MergeResult(inputs, gone, [{"rows": 0}], tmp_path, tmp_path)
    assert "merge-dedup-pair removed all 3 records it got (rejected as duplicates or contaminated)" in (
        result.summary()
    )
