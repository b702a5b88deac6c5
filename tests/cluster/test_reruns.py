"""What a config change re-runs (issue 16, item 1): a stage's hash covers what changes its output, no more, no
less; docs/reruns.md is the generated table of it, for every key of the schema."""

from __future__ import annotations

import hashlib
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.grid import merge_upstream, pending_units, plan_grid, raw_dedup_hash, stage_hashes
from kun_hpc.config.outputs import NOT_OUTPUT, decides_output
from kun_hpc.core.records import Rejected
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.stages.base import Stage
from kun_hpc.stages.filter import calibration_key, tokenizer_path
from tests.conftest import sample_overrides
from tests.stages.test_kun_stages import CHAIN, GREEDY, write_preset
from tools import render_reruns

KUN = ["filter", "label", "point", "answer", "rules"]


def kun_config(tiny_model: Path, tmp: Path, *extra: str):
    """The five stages with the tiny model (its folder: every model and the tokenizer), dedup.raw and the
    percentile calibration on."""
    return config.load(
        None,
        [
            f"run.dir={tmp / 'run'}",
            f"pipeline.stages=[{','.join(KUN)}]",
            *(f"{k}.engine.model={tiny_model}" for k in ("label", "point", "answer")),
            "dedup.raw=true",
            "filter.perplexity.scorer=kenlm",
            f"filter.perplexity.kenlm_model={tiny_model / 'config.json'}",
            *extra,
        ],
    )


def changed(before, after) -> list[str]:
    """The stages whose hash differs, plus "merge" when the merge's inputs were made under another hash."""
    a, b = stage_hashes(before), stage_hashes(after)
    return [s for s in a if a[s] != b[s]] + (
        ["merge"] if merge_upstream(before) != merge_upstream(after) else []
    )


@pytest.mark.parametrize(
    "override",
    ["rules.min_answer_chars=3", "rules.answer_keywords=[抱歉]", "rules.answer_rules=[not_empty]"],
)
def test_an_answer_only_rule_reruns_only_the_rules_stage_and_the_merge(tiny_model, tmp_path, override):
    base = kun_config(tiny_model, tmp_path)
    assert changed(base, kun_config(tiny_model, tmp_path, override)) == ["rules", "merge"]


def test_an_instruction_rule_reruns_label_and_what_follows(tiny_model, tmp_path):
    base = kun_config(tiny_model, tmp_path)
    after = kun_config(tiny_model, tmp_path, "rules.instruction_keywords=[新闻]")
    assert changed(base, after) == ["label", "point", "answer", "rules", "merge"]
    # ... unless Label does not apply them
    no_rules = kun_config(tiny_model, tmp_path, "label.apply_rules=false")
    keywords = kun_config(
        tiny_model, tmp_path, "label.apply_rules=false", "rules.instruction_keywords=[新闻]"
    )
    assert changed(no_rules, keywords) == ["rules", "merge"]


@pytest.mark.parametrize(
    "override",
    [
        "pipeline.chunk_records=7",
        "label.engine.max_num_seqs=8",
        "answer.engine.gpu_memory_utilization=0.5",
        "point.engine.tensor_parallel_size=2",
        "label.engine.batch_size=3",
        "shard.zstd_level=19",
        "shard.max_bad_fraction=0.1",
        "dedup.batch_docs=7",
        "executor.max_parallel=9",
        "corpora.0.license=MIT",
    ],
)
def test_a_knob_that_changes_no_output_reruns_nothing(tiny_model, tmp_path, override):
    base, after = kun_config(tiny_model, tmp_path), kun_config(tiny_model, tmp_path, override)
    assert changed(base, after) == []
    assert raw_dedup_hash(base) == raw_dedup_hash(after)
    assert calibration_key(base) == calibration_key(after)


def test_the_label_model_reruns_label_and_everything_after_it(tiny_model, tmp_path):
    other = tmp_path / "other-model"
    other.mkdir()
    after = kun_config(tiny_model, tmp_path, f"label.engine.model={other}", f"filter.tokenizer={tiny_model}")
    base = kun_config(tiny_model, tmp_path, f"filter.tokenizer={tiny_model}")
    assert changed(base, after) == ["label", "point", "answer", "rules", "merge"]


def test_the_tokenizer_counts_by_content_not_by_path(tiny_model, tmp_path):
    copy = tmp_path / "tokenizer.json"
    copy.write_bytes((tiny_model / "tokenizer.json").read_bytes())
    base = kun_config(tiny_model, tmp_path, f"filter.tokenizer={tiny_model}")
    assert changed(base, kun_config(tiny_model, tmp_path, f"filter.tokenizer={copy}")) == []
    copy.write_bytes(copy.read_bytes().replace(b'"', b' "', 1))  # the same place, other content
    assert changed(base, kun_config(tiny_model, tmp_path, f"filter.tokenizer={copy}")) == [*KUN, "merge"]


def test_a_saved_config_reads_its_hashes_without_the_tokenizer_and_refuses_one_edited_since(
    tiny_model, tmp_path
):
    """The tokenizer's sha256 is recorded at load (``filter.tokenizer_sha256``): a run's saved config gives
    the same hashes once the tokenizer is gone (status of a finished run needs no model files), and the
    filter refuses a tokenizer edited since the config was saved instead of mixing two tokenizers' units."""
    copy = tmp_path / "tok" / "tokenizer.json"
    copy.parent.mkdir()
    copy.write_bytes((tiny_model / "tokenizer.json").read_bytes())
    base = kun_config(tiny_model, tmp_path, f"filter.tokenizer={copy}")
    assert base.filter.tokenizer_sha256 == hashlib.sha256(copy.read_bytes()).hexdigest()
    config.save_resolved(base, tmp_path / "run")
    copy.write_bytes(copy.read_bytes().replace(b'"', b' "', 1))
    with pytest.raises(config.ConfigError, match="changed since this run's config was saved"):
        tokenizer_path(config.load_run(tmp_path / "run"))
    copy.unlink()
    assert stage_hashes(config.load_run(tmp_path / "run")) == stage_hashes(base)


def test_a_corpus_change_reruns_every_stage(tiny_model, tmp_path):
    """The shards' content reaches the stage hashes (before issue 16 only the shard section did: another
    corpus file under the same name kept every stage's markers)."""
    base = kun_config(tiny_model, tmp_path)
    assert changed(base, kun_config(tiny_model, tmp_path, "corpora.0.text_field=content")) == [*KUN, "merge"]


def test_each_declared_pattern_names_keys_of_the_schema():
    leaves = list(render_reruns.leaves(config.load(None, [])))
    for pattern in NOT_OUTPUT:
        assert any(fnmatchcase(k, pattern) for k in leaves), f"{pattern} matches no key"
        assert all(not decides_output(k) for k in leaves if fnmatchcase(k, pattern))


@pytest.mark.slow
def test_the_rerun_table_is_current():
    doc = render_reruns.DOC.read_text()
    assert render_reruns.updated(doc) == doc, "run python tools/render_reruns.py"


def test_the_table_says_what_the_hashes_do(tmp_path):
    """The doc's rows (current: test_the_rerun_table_is_current) for the facts issue 16 names."""
    rows = {}
    block = render_reruns.DOC.read_text().partition(render_reruns.BEGIN)[2].partition(render_reruns.END)[0]
    for line in block.splitlines():
        if line.startswith("| `"):
            key, reruns, _ = (c.strip() for c in line.strip("|").split("|"))
            rows[key.strip("`")] = () if reruns == "nothing" else tuple(reruns.split(", "))
    keys = [
        k.replace("corpora.0.", "corpora[i].")
        for k in render_reruns.leaves(render_reruns.base_config(tmp_path))
    ]
    assert list(rows) == keys  # every key of the schema, once
    assert rows["rules.min_answer_chars"] == rows["rules.answer_keywords"] == ("rules", "merge")
    assert rows["pipeline.chunk_records"] == ()
    assert rows["label.engine.model"] == ("label", "point", "answer", "rules", "merge")
    for key, reruns in rows.items():  # a key declared not to change output re-runs no stage
        if not decides_output(key.replace("[i]", ".0")):
            assert not set(reruns) & {"shard", "calibration", *KUN}, key


# ---------------------------------------------------------------------------------------- real runs
class FailAt(Stage):
    """Adds ``seen``; raises at the record whose id is ``fail_id`` unless ``heal_file`` exists."""

    name = "failat"

    def process(self, batch):
        if not Path(self.options["heal_file"]).is_file():
            for r in batch:
                if r["id"] == self.options["fail_id"]:
                    raise RuntimeError(f"planned failure at {r['id']}")
        return [{**r, "seen": True} if len(r["text"]) % 3 else Rejected(r, "every_third") for r in batch]


def records(run: Path, stage: str) -> list[dict]:
    """The kept records of a stage, shard by shard."""
    root = run / "stages" / stage
    kept = [p for p in list_shards(root) if p.relative_to(root).parts[0] not in ("rejected", "quarantine")]
    return [r for p in kept for r in read_shard(p)]


@pytest.mark.slow
def test_a_unit_interrupted_under_one_chunk_size_resumes_under_another(tmp_path):
    def args(run: Path, chunk: int, fail_id: str) -> list[str]:
        return sample_overrides(
            run,
            "executor.kind=inline",
            "shard.records_per_shard=400",
            f"pipeline.chunk_records={chunk}",
            "pipeline.stages=[tests.cluster.test_reruns:FailAt]",
            f"pipeline.options.failat.fail_id={fail_id}",
            f"pipeline.options.failat.heal_file={tmp_path / 'healed'}",
        )

    run, clean = tmp_path / "run", tmp_path / "clean"
    assert cli.main(["shard", *args(run, 64, "none")]) == 0
    first = list_shards(run / "shards")[0]
    fail_id = [r["id"] for r in read_shard(first)][150]  # in the third chunk of 64
    assert cli.main(["run", *args(run, 64, fail_id)]) != 0
    unit = plan_grid(config.load(None, args(run, 64, fail_id))).units["failat"][0]
    chunks = Path(unit.shards[0].output + ".chunks")
    assert len(list(chunks.glob("chunk-*.json"))) == 2 and read_marker(run, "failat", unit.name) is None
    (tmp_path / "healed").touch()
    assert cli.main(["run", *args(run, 100, fail_id)]) == 0  # another chunk size: the same unit hash
    entry = read_marker(run, "failat", unit.name)["shards"][0]
    assert entry["resumed_at_chunk"] == 2 and entry["chunks"] == 2 + -(-(entry["in"] - 128) // 100)
    assert cli.main(["run", *args(clean, 64, fail_id)]) == 0  # healed from the start: never interrupted
    assert records(run, "failat") == records(clean, "failat")


@pytest.mark.slow
def test_an_answer_rule_change_reruns_only_the_rules_units_of_a_real_run(tmp_path, tiny_model):
    """The Kun chain with the tiny model (transformers, inline); then rules.min_answer_chars changes: only
    the rules units run again, the Label, Point and Answer markers stay as they were."""
    preset = write_preset(tmp_path, tiny_model, "transformers", 8)
    base = [str(preset), f"run.dir={tmp_path / 'run'}", *GREEDY]
    assert cli.main(["run", *base]) == 0
    done = tmp_path / "run" / "done"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in done.rglob("*.json")}
    assert {p.parent.name for p in before} >= set(CHAIN)
    changed_rule = [*base, "rules.min_answer_chars=100000"]
    pending = pending_units(plan_grid(config.load(base[0], changed_rule[1:])))
    assert {s: len(us) for s, us in pending.items()} == {"label": 0, "point": 0, "answer": 0, "rules": 1}
    assert cli.main(["run", *changed_rule]) == 0
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in done.rglob("*.json")}
    for p, seen in before.items():
        if p.parent.name in ("label", "point", "answer"):
            assert after[p] == seen, p
    rules = [p for p in after if p.parent.name == "rules"]
    assert rules and all(after[p] != before[p] for p in rules)
    assert records(tmp_path / "run", "rules") == []  # every answer is now too short
