"""Every tool and command works from any working directory (issue 12, kind 10): relative paths of a preset
are found under the working dir, else under the repo, and a run's saved config names them absolutely."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from tests.conftest import REPO

TOOLS = sorted(p for p in (REPO / "tools").glob("*.py") if "__main__" in p.read_text(encoding="utf-8"))
KUN_HPC = [sys.executable, "-m", "kun_hpc.cli"]


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_make_tiny_model_runs_outside_the_repo(tmp_path, tiny_model):
    out = run([sys.executable, str(REPO / "tools" / "make_tiny_model.py"), "--out", "tiny"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "tiny" / "tokenizer.json").is_file()
    recipe = json.loads((tmp_path / "tiny" / "tiny_model.json").read_text(encoding="utf-8"))
    assert recipe["sample_dir"] == "shards/sample"  # the fingerprint stays repo-relative
    # the same recipe built from the repo root (the tests' session model) is the same tokenizer
    vocab = [
        json.loads((m / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]
        for m in (tmp_path / "tiny", tiny_model)
    ]
    assert vocab[0] == vocab[1]


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_every_tool_starts_outside_the_repo(tool, tmp_path):
    out = run([sys.executable, str(tool), "--help"], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["render_config_reference.py", "render_plans.py"])
def test_doc_renderers_check_the_repo_docs_from_anywhere(tool, tmp_path):
    out = run([sys.executable, str(REPO / "tools" / tool), "--check"], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.mark.slow
def test_the_default_preset_shards_the_sample_from_any_directory(tmp_path):
    """The same run from the repo root and from elsewhere (a relative run dir each): same shards; the saved
    config names absolute paths, so `status` works from a third directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    manifests = {}
    for name, cwd in (("repo", REPO), ("elsewhere", elsewhere)):
        run_dir = tmp_path / f"run-{name}"
        rel = Path("..") / run_dir.name if cwd == elsewhere else run_dir
        out = run([*KUN_HPC, "shard", f"run.dir={rel}"], cwd)
        assert out.returncode == 0, out.stderr[-3000:]
        manifests[name] = {
            c: orjson.loads((run_dir / "shards" / c / "manifest.json").read_bytes())
            for c in ("wudao", "wanjuan", "skypile")
        }
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        for corpus in saved["corpora"]:
            assert corpus["paths"] == [str(REPO / "shards" / "sample" / corpus["name"])]
        assert saved["label"]["template"] == str(REPO / "configs" / "prompts" / "label.txt")
        assert saved["train"]["seed_data"] == [str(REPO / "shards" / "sample" / "seed")]
        assert saved["shard"]["output"] == str(run_dir / "shards")
    for corpus, m in manifests["repo"].items():
        other = manifests["elsewhere"][corpus]
        assert m["records"] == other["records"] > 0
        assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in other["shards"]]
    status = [run([*KUN_HPC, "status", str(tmp_path / "run-elsewhere")], cwd) for cwd in (Path("/"), REPO)]
    assert [s.returncode for s in status] == [0, 0], status[0].stderr[-3000:]
    assert status[0].stdout == status[1].stdout
    assert "kun-hpc status" in status[0].stdout


def test_a_path_found_nowhere_is_absolute_under_the_working_dir(tmp_path, monkeypatch):
    """Issue 16: no relative path is left in a config; only a model that looks like a hub id stays as
    written, so the engine refuses it by that name."""
    from kun_hpc import config

    monkeypatch.chdir(tmp_path)
    assert config.input_path("Qwen/Qwen2-7B-Instruct", model=True) == "Qwen/Qwen2-7B-Instruct"
    assert config.input_path("Qwen/Qwen2-7B-Instruct") == str(tmp_path / "Qwen" / "Qwen2-7B-Instruct")
    assert config.input_path("./models/m", model=True) == str(tmp_path / "models" / "m")
    assert config.input_path("data/*.jsonl") == str(tmp_path / "data" / "*.jsonl")
    assert config.input_path("configs/prompts/label.txt") == str(REPO / "configs" / "prompts" / "label.txt")
    (tmp_path / "configs" / "prompts").mkdir(parents=True)
    (tmp_path / "configs" / "prompts" / "label.txt").write_text("{text}", encoding="utf-8")
    assert config.input_path("configs/prompts/label.txt") == str(
        tmp_path / "configs" / "prompts" / "label.txt"
    )
    assert config.input_path("shards/sample/sky*/*.jsonl") == str(
        REPO / "shards" / "sample" / "sky*" / "*.jsonl"
    )


RATE = re.compile(r"[\d.,]+/s")  # the records-per-second a status shows may differ from call to call


def string_leaves(node: object, key: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every string in a loaded YAML tree."""
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in string_leaves(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in string_leaves(v, f"{key}.{i}")]
    return [(key, node)] if isinstance(node, str) else []


@pytest.mark.slow
def test_a_run_is_read_from_any_directory_and_its_saved_config_has_only_absolute_paths(tmp_path, tiny_model):
    """Issue 16, item 6: a user's project folder with relative paths (a corpus, a tokenizer, a base model
    not built yet); the run's saved config names every path absolutely, and status, logs, plan, inspect
    and a merge of the finished run work from another directory as from the project's."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "data").mkdir(parents=True)
    (project / "tok").mkdir()
    elsewhere.mkdir()
    shutil.copy(tiny_model / "tokenizer.json", project / "tok" / "tokenizer.json")
    lines = next((REPO / "shards" / "sample" / "skypile").glob("*.jsonl")).read_bytes().splitlines()[:40]
    (project / "data" / "c.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (project / "my.yaml").write_text(
        "executor: {kind: inline}\n"
        "corpora: [{name: c, format: jsonl, paths: [data/c.jsonl]}]\n"
        "pipeline: {stages: [filter]}\n"
        "filter: {tokenizer: tok}\n"
        "train: {base_model: checkpoints/base/final}\n",  # found nowhere: the user trains it later
        encoding="utf-8",
    )
    run_dir = tmp_path / "run"
    out = run([*KUN_HPC, "run", "my.yaml", "run.dir=../run"], project)
    assert out.returncode == 0, out.stderr[-3000:]

    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["corpora"][0]["paths"] == [str(project / "data" / "c.jsonl")]
    assert saved["filter"]["tokenizer"] == str(project / "tok")
    assert saved["train"]["base_model"] == str(project / "checkpoints" / "base" / "final")
    licenses = {f"corpora.{i}.license" for i in range(len(saved["corpora"]))}
    paths = [(k, v) for k, v in string_leaves(saved) if "/" in v and k not in licenses]
    assert len(paths) >= 12  # run.dir, outputs, templates, corpus, tokenizer, base model, seed data
    assert [(k, v) for k, v in paths if not Path(v).is_absolute()] == []

    for cmd in (["status"], ["logs"], ["plan"], ["inspect", "filter"]):
        here, there = (run([*KUN_HPC, cmd[0], str(run_dir), *cmd[1:]], cwd) for cwd in (project, elsewhere))
        assert (cmd, here.returncode, there.returncode) == (cmd, 0, 0), there.stderr[-3000:]
        assert RATE.sub("", there.stdout) == RATE.sub("", here.stdout)
    merge = run([*KUN_HPC, "merge", str(run_dir)], elsewhere)
    assert merge.returncode == 0, merge.stderr[-3000:]
