"""slurm/pipeline.sh: the reference scripts' five arguments run the whole Kun grid, with paths that a shell or
a YAML parser would trip on (spaces, quotes, ``$(...)``, commas, colons) passed through untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from kun_hpc.config import load_run as load_run_config
from kun_hpc.io.shards import list_shards, read_shard
from tests.conftest import REPO, SAMPLE

CPU_PROFILE = REPO / "configs" / "profiles" / "cpu.yaml"
SCRIPT = REPO / "slurm" / "pipeline.sh"
STAGES = ["filter", "label", "point", "answer", "rules"]
LLM = ("label", "point", "answer")
NASTY = 'in $(touch pwned) it\'s "q", a:b `touch pwned2`'
SMALL = [  # the tiny model on transformers, short generations, one chunk: the chain in well under a minute
    "executor.kind=inline",
    "pipeline.chunk_records=10",
    *(f"{s}.engine.{k}" for s in LLM for k in ("backend=transformers", "dtype=float32")),
    *(f"{s}.sampling.max_new_tokens=8" for s in LLM),
    "label.reject_truncated=false",
    "answer.reject_truncated=false",
]


def run_script(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "KUN_PYTHON": sys.executable, "KUN_PROFILE": str(CPU_PROFILE)}
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env={**full, **env}, capture_output=True, text=True, timeout=600
    )


def no_side_effects(*folders: Path) -> None:
    for folder in folders:
        assert not list(folder.rglob("pwned*")), "a path was executed by a shell"


@pytest.fixture
def workdir(tmp_path) -> Path:
    work = tmp_path / "work dir, with: spaces"
    data = work / NASTY
    data.mkdir(parents=True)
    lines = (SAMPLE / "skypile" / "2020-40_zh_head_0000.jsonl").read_bytes().splitlines()[:12]
    # the reference's input: JSON lines with a text field (and another field, ignored)
    (data / "corpus.jsonl").write_bytes(
        b"".join(orjson.dumps({"text": orjson.loads(x)["text"], "url": "u"}) + b"\n" for x in lines)
    )
    return work


@pytest.mark.slow
def test_five_arguments_run_the_whole_grid_and_nothing_is_executed(workdir, tiny_model):
    model = str(tiny_model)
    out = f'out $(touch pwned) "q", x:y {"`touch pwned3`"}'
    # DATA_PATH relative to where the script starts; OUTPUT_PATH absolute
    proc = run_script(workdir, model, model, model, NASTY, str(workdir / out), *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = workdir / out
    no_side_effects(workdir, Path.cwd())
    cfg = load_run_config(run)  # the paths arrived as they are
    assert list(cfg.corpora[0].paths) == [str(workdir / NASTY)] and cfg.run.dir == str(run)
    assert cfg.corpora[0].format == "jsonl" and cfg.executor.stage_resources.label.cpus_per_task == 32
    markers = {s: [orjson.loads(p.read_bytes()) for p in (run / "done" / s).glob("*.json")] for s in STAGES}
    assert all(len(markers[s]) == 1 for s in STAGES), markers.keys()
    assert markers["filter"][0]["in"] == 12
    previous = markers["filter"][0]["units"]["out"]
    assert previous > 0
    for stage in STAGES[1:]:  # every stage read what the one before kept, and accounted for all of it
        m = markers[stage][0]
        assert m["in"] == previous, stage
        assert m["in"] == m["out"] + sum(m["rejected"].values()) + sum(m["quarantined"].values())
        rejected = [r for p in list_shards(run / "stages" / stage / "rejected") for r in read_shard(p)]
        assert Counter(r["reject"]["reason"] for r in rejected) == Counter(m["rejected"])
        previous = m["out"]
    assert markers["label"][0]["out"] > 0  # instructions were written
    kept = list_shards(run / "stages" / "rules" / "jsonl")
    assert kept and sum(1 for p in kept for _ in read_shard(p)) == markers["rules"][0]["out"]
    label = next(r for p in list_shards(run / "stages" / "label" / "jsonl") for r in read_shard(p))
    assert label["prov"]["label"]["model"] == str(tiny_model.resolve())


def test_bad_arguments_are_refused_before_anything_runs(workdir, tmp_path):
    proc = run_script(workdir, "a", "b", "c", "d")
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = run_script(workdir, "m", "m", "m", "data ${oc.env:HOME}", str(tmp_path / "out"))
    assert proc.returncode == 2 and "DATA_PATH" in proc.stderr and "${" in proc.stderr
    proc = run_script(workdir, "m", "", "m", NASTY, str(tmp_path / "out"))
    assert proc.returncode == 2 and "POINT_MODEL" in proc.stderr
    assert not (tmp_path / "out").exists()
    no_side_effects(workdir)


def test_a_missing_model_is_named_by_its_config_key(workdir, tmp_path):
    proc = run_script(workdir, "no model here", "m", "m", NASTY, str(tmp_path / "out"), *SMALL)
    assert proc.returncode != 0
    assert "no model here" in proc.stderr
    no_side_effects(workdir)
