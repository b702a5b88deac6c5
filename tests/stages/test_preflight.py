"""The whole config is checked before any work (issue 16): a stage name typo, a custom stage that does not
import, a tokenizer that does not exist and required keys left unset fail every command that does work
before it writes anything (no run dir, no shard), and every problem comes in one message (exit 2)."""

from __future__ import annotations

import pytest

from kun_hpc import cli, config
from kun_hpc.stages.registry import STAGES, preflight
from tests.conftest import sample_overrides

KNOWN = f"known: {sorted(STAGES)} or 'package.module:Class'"
# the filter with a tokenizer that is not there (and no Answer budget, whose model the default lacks)
NO_TOKENIZER = [
    "pipeline.stages=[filter]",
    "filter.tokenizer=/no/such/tokenizer",
    "answer.max_prompt_tokens=null",
]
TOKENIZER_PROBLEM = (
    "config key 'filter.tokenizer': tokenizer '/no/such/tokenizer' does not exist (a model folder or a "
    "tokenizer.json)"
)
INSTANCES = {
    "stage typo": (["pipeline.stages=[filtr]"], f"unknown stage 'filtr' (did you mean 'filter'?); {KNOWN}"),
    "custom stage": (
        ["pipeline.stages=[nosuch.module:Stage]"],
        "config key 'pipeline.stages': cannot load stage 'nosuch.module:Stage': No module named 'nosuch'",
    ),
    "required keys": (["corpora.1.paths=???"], "config key 'corpora.1.paths': must be set"),
    "tokenizer": (NO_TOKENIZER, TOKENIZER_PROBLEM),
}
# filter-calibrate checks the filter when it has percentile cut-offs to compute
CALIBRATE = ["filter.perplexity.scorer=kenlm", "filter.perplexity.kenlm_model=/no/such.arpa"]
# shard, reshard, merge and plan need no tokenizer: they check the stage names only
CASES = [
    (command, instance)
    for command in ("run", "shard", "reshard", "filter-calibrate", "merge", "plan")
    for instance in INSTANCES
    if instance != "tokenizer" or command in ("run", "filter-calibrate")
]


@pytest.mark.parametrize(("command", "instance"), CASES)
def test_a_bad_config_fails_before_any_work(tmp_path, capsys, command, instance):
    run_dir = tmp_path / "run"
    overrides, problem = INSTANCES[instance]
    extra = CALIBRATE if command == "filter-calibrate" else []
    args = [command, *sample_overrides(run_dir, "executor.kind=inline", *overrides, *extra)]
    assert cli.main(args) == 2
    assert problem in capsys.readouterr().err
    assert not run_dir.exists()  # no config saved, no shard written


def test_three_problems_of_three_kinds_come_in_one_message(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = sample_overrides(run_dir, "executor.kind=inline", "corpora.2.paths=???", *NO_TOKENIZER)
    args += ["pipeline.stages=[filter, labl]"]  # after NO_TOKENIZER's: the last override wins
    assert cli.main(["run", *args]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "kun-hpc: 3 problems in the config:",
        "  config key 'corpora.2.paths': must be set (got '???')",
        f"  config key 'pipeline.stages': unknown stage 'labl' (did you mean 'label'?); {KNOWN}",
        f"  {TOKENIZER_PROBLEM}",
    ]
    assert not run_dir.exists()


def test_preflight_lists_models_templates_and_stage_classes_together(tmp_path):
    template = tmp_path / "label.txt"
    template.write_text("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
    cfg = config.load(
        None,
        [
            f"run.dir={tmp_path / 'run'}",
            "pipeline.stages=[label, kun_hpc.config:Config]",
            f"label.engine.model={tmp_path / 'no-model'}",
            f"label.template={template}",
            "label.template_sha256=0123456789abcdef",  # what a saved run keeps: the template changed since
        ],
    )
    with pytest.raises(config.ConfigError) as e:
        preflight(cfg)
    lines = str(e.value).splitlines()
    assert lines[0] == "3 problems in the config:"
    assert lines[1] == "  config key 'pipeline.stages': 'kun_hpc.config:Config' is not a Stage subclass"
    assert lines[2].startswith(
        f"  config key 'label.engine.model': {tmp_path / 'no-model'} is not a local model"
    )
    assert lines[3].startswith(f"  config key 'label.template': prompt template {template} changed after")


def test_a_model_that_kun_hpc_train_writes_says_so(tmp_path):
    """The demo's Label and Chat models are ``kun-hpc train``'s outputs: before they are trained, the
    message says which command writes each (issue 16 newcomer review)."""
    cfg = config.load("demo", [f"run.dir={tmp_path / 'run'}"])
    with pytest.raises(config.ConfigError) as e:
        preflight(cfg)
    lines = {line.split("'")[1]: line for line in str(e.value).splitlines() if "engine.model" in line}
    for key, task in (("label", "label"), ("point", "chat"), ("answer", "chat")):
        assert str(tmp_path / "run" / "train" / task / "model") in lines[f"{key}.engine.model"]
        assert lines[f"{key}.engine.model"].endswith(
            f"`kun-hpc train {task}` with this config writes it: train it first"
        )
