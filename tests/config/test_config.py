from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from omegaconf import OmegaConf

from kun_hpc import cli, config


def test_defaults_come_from_the_embedded_preset():
    cfg = config.load()
    assert [c.name for c in cfg.corpora] == ["wudao", "wanjuan", "skypile"]
    assert cfg.executor.kind == "local"
    # interpolations are resolved, from an absolute run dir
    assert cfg.shard.output == str(Path.cwd().resolve() / "runs" / "default" / "shards")


def test_overrides_reach_list_items_and_nested_keys(tmp_path):
    cfg = config.load(None, [f"run.dir={tmp_path}", "corpora.1.paths=[a,b]", "executor.slurm.mem_gb=8"])
    assert list(cfg.corpora[1].paths) == [str(Path.cwd() / "a"), str(Path.cwd() / "b")]  # found nowhere
    assert cfg.executor.slurm.mem_gb == 8.0
    assert cfg.shard.output == f"{tmp_path}/shards"


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("shard.records_per_shard=0", "shard.records_per_shard"),
        ("shard.records_per_shard=many", "shard.records_per_shard"),
        ("shard.no_such_key=1", "no_such_key"),
        ("executor.kind=kubernetes", "executor.kind"),
        ("corpora.0.format=parquet", "corpora.0.format"),
        ("shard.max_bad_fraction=2", "shard.max_bad_fraction"),
        ("dedup.bands=50", "dedup.bands': must divide dedup.permutations (120)"),
        ("dedup.long_bands=7", "dedup.long_bands"),
        ("dedup.threshold=1.5", "dedup.threshold"),
        ("dedup.token_threshold=0", "dedup.token_threshold"),
        ("dedup.seed=-1", "dedup.seed"),
        ("dedup.rows=3", "rows"),  # issue 13: the rows follow from permutations / bands
        ("dedup.normalize.whitespace=false", "whitespace"),  # whitespace always separates now
    ],
)
def test_bad_values_are_reported_with_their_key(override, names):
    with pytest.raises(config.ConfigError, match=re.escape(names)):
        config.load(None, [override])


def test_cli_exits_2_naming_the_bad_key(capsys):
    assert cli.main(["shard", "shard.zstd_level=99"]) == 2
    assert "shard.zstd_level" in capsys.readouterr().err


def test_missing_preset_file_is_named():
    with pytest.raises(config.ConfigError, match=r"nope\.yaml"):
        config.load("configs/nope.yaml")


def test_resolved_config_and_hash_are_saved(tmp_path):
    cfg = config.load(None, [f"run.dir={tmp_path}"])
    digest = config.save_resolved(cfg, tmp_path)
    assert (tmp_path / "config.sha256").read_text().strip() == digest
    again = config.load(None, [f"run.dir={tmp_path}"])
    assert config.config_hash(again) == digest
    assert config.load(str(tmp_path / "config.yaml")).shard == cfg.shard
    changed = config.load(None, [f"run.dir={tmp_path}", "shard.records_per_shard=7"])
    assert config.config_hash(changed) != digest


def test_presets_build_on_included_presets_in_order(tmp_path):
    (tmp_path / "profile.yaml").write_text(
        "executor: {kind: slurm, slurm: {time_min: 600, cpus_per_task: 8}}\npipeline: {chunk_records: 7}\n"
    )
    (tmp_path / "corpus.yaml").write_text(
        "corpora: [{name: web, format: skypile, paths: [data/web]}]\npipeline: {chunk_records: 9}\n"
    )
    (tmp_path / "mine.yaml").write_text(
        "include: [profile.yaml, corpus.yaml]\nexecutor: {slurm: {time_min: 30}}\n"
    )
    cfg = config.load(tmp_path / "mine.yaml", ["executor.slurm.cpus_per_task=4"])
    assert cfg.executor.kind == "slurm" and cfg.executor.slurm.time_min == 30  # the preset wins
    assert cfg.executor.slurm.cpus_per_task == 4  # overrides win over all
    assert cfg.pipeline.chunk_records == 9  # a later include wins over an earlier one
    assert [c.name for c in cfg.corpora] == ["web"]
    assert "include" not in cfg


def test_include_loops_and_missing_includes_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(config.ConfigError, match="include loop"):
        config.load(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("include: [nowhere.yaml]\n")
    with pytest.raises(config.ConfigError, match=r"nowhere\.yaml"):
        config.load(tmp_path / "c.yaml")


def test_flags_may_come_before_or_after_the_overrides():
    want = ["configs/demo.yaml", "a=1", "b=2"]
    for argv in (["run", "--wait", *want], ["run", "configs/demo.yaml", "--wait", "a=1", "b=2"],
                 ["run", *want, "--wait"]):  # fmt: skip
        ns = cli.parse(argv)
        assert ns.wait and ns.args == want, argv
    with pytest.raises(SystemExit):
        cli.parse(["run", "configs/demo.yaml", "--no-such-flag", "a=1"])


def test_a_choice_is_its_plain_string_everywhere(tmp_path):
    # OmegaConf finds a member by name and writes it by name: name and value must be the same text
    for choice in config.choices.CHOICES:
        assert [m.name for m in choice] == [m.value for m in choice], choice
    cfg = config.load(None, [f"run.dir={tmp_path}", "executor.kind=slurm", "merge.dedup_by=[pair,text]"])
    kind = cfg.executor.kind
    assert kind is config.ExecutorKind.slurm
    assert kind == "slurm" and f"{kind}" == str(kind) == "slurm" and repr(kind) == "'slurm'"
    assert {"slurm": 1}[kind] == 1 and list(cfg.merge.dedup_by) == ["pair", "text"]
    plain = OmegaConf.to_container(cfg.merge, resolve=True)
    assert orjson.dumps(plain) == orjson.dumps({**plain, "dedup_by": ["pair", "text"]})
    assert "kind: slurm\n" in config.to_yaml(cfg)
    assert config.save_resolved(cfg, tmp_path) == config.config_hash(config.load_run(tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "executor.kind=bogus",
            "config key 'executor.kind': must be one of ('local', 'slurm', 'inline') (got 'bogus')",
        ),
        (
            "corpora.0.format=parquet",
            "config key 'corpora.0.format': must be one of ('wudao', 'wanjuan', 'skypile', 'jsonl')",
        ),
        (
            "train.distributed=fsdp2",
            "config key 'train.distributed': must be one of ('ddp', 'fsdp', 'deepspeed')",
        ),
        ("train.lora.dropout=1.5", "config key 'train.lora.dropout': must be in [0, 1)"),
        (
            "dedup.keep=[score,size]",
            "config key 'dedup.keep.1': must be one of ('score', 'length', 'id') (got 'size')",
        ),
        ("merge.dedup_by=[text,text]", "config key 'merge.dedup_by': must list distinct keys"),
        (
            "filter.perplexity.drop=[head,middle,tail]",
            "config key 'filter.perplexity.drop': must list some of",
        ),
        (
            "label.engine.backend=tgi",
            "config key 'label.engine.backend': must be one of ('vllm', 'transformers')",
        ),
        ("rules.answer_rules=[nope]", "config key 'rules.answer_rules': unknown rules"),
    ],
)
def test_a_bad_choice_names_its_key_and_the_valid_values(override, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(None, [override])


def test_the_rules_stage_implements_exactly_the_rule_names_of_the_config():
    from kun_hpc.stages import rules

    assert set(rules.INSTRUCTION_RULES) == set(config.INSTRUCTION_RULE_NAMES)
    assert set(rules.ANSWER_RULES) == set(config.ANSWER_RULE_NAMES)
    defaults = config.RulesConfig()
    assert set(defaults.instruction_rules) <= set(config.INSTRUCTION_RULE_NAMES)
    assert set(defaults.answer_rules) <= set(config.ANSWER_RULE_NAMES)


def test_a_run_saved_before_a_key_was_retired_still_loads_with_a_note(tmp_path, capsys):
    """A config.yaml written by the kun-hpc before issue 17 holds train.fsdp and train.length_group_window:
    the run loads (status, merge, export read it), each retired key named on stderr with its replacement, as
    is any other key this release does not know in a run's saved config; a user's preset still refuses an
    unknown key (a typo)."""
    cfg = config.load(None, [f"run.dir={tmp_path}"])
    config.save_resolved(cfg, tmp_path)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    saved.train.fsdp = {"sharding": "full", "wrap_classes": [], "cpu_offload": False}
    saved.train.length_group_window = 64
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    loaded = config.load_run(tmp_path)
    assert loaded.run.dir == str(tmp_path) and "fsdp" not in loaded.train
    err = capsys.readouterr().err
    assert f"{tmp_path / 'config.yaml'}: train.fsdp is no longer read and was left out" in err
    assert "train.length_group_window is no longer read" in err
    saved.dedup.normalize.whitespace = True  # retired by issue 13: any key an older release wrote goes
    saved.corpora[0].old_field = "x"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert config.load_run(tmp_path).dedup.normalize == cfg.dedup.normalize
    err = capsys.readouterr().err
    for key in ("dedup.normalize.whitespace", "corpora[0].old_field"):
        assert f"{key} is not a key of this kun-hpc (an older release wrote it) and was left out" in err
    preset = tmp_path / "mine.yaml"  # a user's preset is no run's saved config: an unknown key is refused
    preset.write_text("train:\n  typo_key: 1\n")
    with pytest.raises(config.ConfigError, match="typo_key"):
        config.load(preset)
