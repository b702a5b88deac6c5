"""Cluster profiles and corpus configs: every corpus x profile composes and plans (GPU hours for the model
stages), what must be set is named, the profiles are self-consistent, no machine path is committed, the plan
counts manifests and measured markers once they exist, and docs/configs.md shows the current plans."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.plan import plan
from kun_hpc.io.shards import list_shards, read_shard
from tests.conftest import REPO, SAMPLE
from tools import render_plans

CONFIGS = REPO / "configs"
PROFILES = sorted(p.stem for p in (CONFIGS / "profiles").glob("*.yaml"))
CORPORA = sorted(p.stem for p in (CONFIGS / "corpora").glob("*.yaml"))
GPU_STAGES = ("label", "point", "answer")


def run_preset(tmp: Path, profile: str, corpus: str) -> Path:
    return render_plans.write_preset(profile, corpus, tmp)


def test_the_profiles_and_corpora_are_there():
    assert PROFILES == ["a100-34b", "a100-6b", "cpu"]
    assert CORPORA == ["skypile", "wanjuan", "wudao"]


@pytest.mark.parametrize("corpus", CORPORA)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_corpus_plans_on_every_profile_before_sharding(profile, corpus, tmp_path):
    preset = run_preset(tmp_path, profile, corpus)
    cfg = config.load(preset, [*render_plans.PLACEHOLDERS, f"run.dir={tmp_path}"])
    result = plan(cfg)
    assert [c.source for c in result.corpora] == ["expected_records"]
    expected = cfg.corpora[0].expected_records
    assert result.corpora[0].records == expected > 10**8
    stages = {p.stage: p for p in result}
    assert list(stages) == ["filter", "label", "point", "answer", "rules"]
    records = expected
    for p in result:  # each stage reads what the one before kept
        assert p.records == round(records) and p.keep == cfg.pipeline.expected_keep[p.stage]
        assert p.units == p.pending == -(-result.corpora[0].shards // cfg.pipeline.shards_per_task)
        records *= p.keep
    assert stages["filter"].keep > 1  # documents fan out into units
    for s in GPU_STAGES:
        unit, hours = stages[s].resource_hours
        assert unit == ("CPU h" if profile == "cpu" else "GPU h") and hours > 0
    assert stages["filter"].resource_hours[0] == "CPU h" and stages["rules"].resource_hours[0] == "CPU h"
    assert set(result.totals()) == ({"CPU h"} if profile == "cpu" else {"CPU h", "GPU h"})


@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "cpu"])
def test_gpu_profiles_give_each_llm_task_its_tensor_parallel_gpus(profile):
    cfg = config.load(CONFIGS / "profiles" / f"{profile}.yaml", [f"{s}.engine.model=m" for s in GPU_STAGES])
    tp = {s: cfg[s].engine.tensor_parallel_size for s in GPU_STAGES}
    assert set(tp.values()) == ({2} if profile == "a100-34b" else {1})
    for s in GPU_STAGES:
        res = cfg.executor.stage_resources[s]
        assert res.gpus_per_task == tp[s] and 8 % res.gpus_per_task == 0  # whole tasks on an 8-GPU node
        assert cfg[s].engine.dtype == "bfloat16"
        assert cfg.pipeline.chunk_records >= 4 * cfg[s].engine.max_num_seqs
    for s in ("filter", "rules"):
        assert cfg.executor.stage_resources[s].gpus_per_task == 0


def test_what_the_user_must_set_is_named(tmp_path):
    preset = run_preset(tmp_path, "a100-34b", "skypile")
    with pytest.raises(config.ConfigError, match=r"corpora\.0\.paths.*must be set"):
        config.load(preset)
    with pytest.raises(config.ConfigError, match=r"label\.engine\.model"):
        config.load(preset, ["corpora.0.paths=[x]"])
    with pytest.raises(config.ConfigError, match=r"pipeline\.expected_keep\.label"):
        config.load(preset, [*render_plans.PLACEHOLDERS, "pipeline.expected_keep.label=-1"])
    with pytest.raises(config.ConfigError, match=r"corpora\.0\.expected_records"):
        config.load(preset, [*render_plans.PLACEHOLDERS, "corpora.0.expected_records=-5"])


def test_no_machine_path_in_committed_configs():
    machine = re.compile(r"(?<![\w.~-])/(models|data|work|home|scratch|mnt|shared|opt|tmp)\b")
    for path in CONFIGS.rglob("*.yaml"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not machine.search(line), f"{path.relative_to(REPO)}:{n}: {line}"


@pytest.mark.slow
def test_plan_counts_the_manifest_and_measured_units_once_they_exist(tmp_path, tiny_model, capsys):
    preset = run_preset(tmp_path, "cpu", "skypile")
    args = [
        str(preset), f"run.dir={tmp_path / 'run'}", f"corpora.0.paths=[{SAMPLE / 'skypile'}]",
        *render_plans.PLACEHOLDERS[1:], f"filter.tokenizer={tiny_model}", "shard.records_per_shard=300",
        f"answer.engine.model={tiny_model}",  # the filter cuts units to the Answer budget (issue 12)
    ]  # fmt: skip
    cfg = config.load(args[0], args[1:])
    assert plan(cfg).corpora[0].source == "expected_records"
    assert cli.main(["run", *args, "executor.kind=inline", "pipeline.stages=[filter]"]) == 0
    result = plan(cfg)
    assert [(c.records, c.source, c.shards) for c in result.corpora] == [(1004, "manifest", 4)]
    stages = {p.stage: p for p in result}
    f = stages["filter"]
    assert f.units == 4 and f.pending == 0 and f.source == "measured on 4 units"
    units = sum(
        1 for p in list_shards(tmp_path / "run" / "stages" / "filter" / "skypile") for _ in read_shard(p)
    )
    assert units > 1004
    assert f.keep_source == "measured" and f.keep == pytest.approx(units / 1004)  # units out per document
    assert stages["label"].records == units and stages["label"].pending == 4  # not run yet
    capsys.readouterr()
    assert cli.main(["plan", *args]) == 0
    out = capsys.readouterr().out
    assert "1,004 records (manifest)" in out and "GPU h" not in out and "CPU h" in out


@pytest.mark.slow
def test_docs_show_the_current_plans():
    doc = (REPO / "docs" / "configs.md").read_text()
    assert render_plans.updated(doc) == doc, "run python tools/render_plans.py"
    for corpus in CORPORA:
        for profile in PROFILES:
            assert f"### {corpus} on {profile}" in doc
