"""Every problem of a config in one message (issue 16): required keys left unset, overrides that do not
apply and each section's checks are all found by one load, not one per run."""

from __future__ import annotations

import pytest

from kun_hpc import config
from kun_hpc.config.checks import Problems, check


def problems_of(overrides: list[str]) -> list[str]:
    """The problem lines of the ConfigError that loading the default preset with ``overrides`` raises."""
    with pytest.raises(config.ConfigError) as e:
        config.load(None, overrides)
    lines = str(e.value).splitlines()
    if len(lines) == 1:
        return lines
    assert lines[0] == f"{len(lines) - 1} problems in the config:"
    return [line.removeprefix("  ") for line in lines[1:]]


def test_every_unset_required_key_is_named_at_once():
    # a corpus given its format only: its name and paths are both required
    assert problems_of(["corpora=[{format: jsonl}]"]) == [
        "config key 'corpora.0.name': must be set (got '???')",
        "config key 'corpora.0.paths': must be set (got '???')",
    ]


def test_an_unknown_key_a_bad_value_and_a_missing_key_come_in_one_message():
    assert problems_of(
        ["pipeline.stagez=[filter]", "shard.zstd_level=99", "corpora.1.paths=???", "dedup.bands=0"]
    ) == [
        "config key 'pipeline.stagez': Key 'stagez' not in 'PipelineConfig'. Did you mean: 'stages'?",
        "config key 'corpora.1.paths': must be set (got '???')",
        "config key 'shard.zstd_level': must be in 1..22 (got 99)",
        "config key 'dedup.bands': must be >= 1 (got 0)",
    ]


def test_every_key_left_unset_in_a_preset_of_ones_own_is_named(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text(
        "corpora:\n"
        "  - name: a\n    format: jsonl\n    paths: ???\n"
        "  - name: b\n    format: jsonl\n    paths: ???\n"
        "pipeline:\n  options:\n    mystage:\n      model: ???\n"
    )
    with pytest.raises(config.ConfigError) as e:
        config.load(preset)
    assert str(e.value).splitlines() == [
        "3 problems in the config:",
        "  config key 'corpora.0.paths': must be set (got '???')",
        "  config key 'corpora.1.paths': must be set (got '???')",
        "  config key 'pipeline.options.mystage.model': must be set (got '???')",
    ]


def test_an_llm_stage_model_is_required_only_when_the_stage_runs():
    # label.engine.model is ??? by default: no problem without label in the pipeline ...
    config.load(None, ["pipeline.stages=[filter]"])
    # ... and the stage's own wording with it
    assert problems_of(["pipeline.stages=[filter, label]"]) == [
        "config key 'label.engine.model': the stage needs a local model folder (tools/make_tiny_model.py "
        "builds a tiny one) (got None)"
    ]


def test_a_collector_keeps_each_problem_once_and_a_plain_check_still_raises_at_once():
    found = Problems()
    with found.collect():
        check(False, "a.b", "must be set", "???")
        check(True, "a.c", "never", 1)
        check(False, "a.b", "must be set", "???")
        check(False, "a.d", "must be >= 1", 0)
    assert found.lines == [
        "config key 'a.b': must be set (got '???')",
        "config key 'a.d': must be >= 1 (got 0)",
    ]
    with pytest.raises(config.ConfigError, match=r"^config key 'x': bad \(got 2\)$"):
        check(False, "x", "bad", 2)
