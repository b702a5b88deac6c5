"""``kun-hpc iterate``: Humpback's self-curation rounds on the tiny model (CPU, transformers, inline stages).

A finished run over 20 SkyPile records (label -> point -> answer -> rules, Point calibrated), then
``--rounds 1``, then ``--rounds 2`` killed (SIGKILL) during round 2's training and run again: round 2
resumes, round 1 is not touched, each round's Point and Answer records name that round's model in ``prov``,
each round trained on the seed plus the pairs the round before kept, and the report's verdict changes equal
a recount by record id from the stages' output files.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from omegaconf import OmegaConf

from kun_hpc import cli, config
from kun_hpc.cluster.dag import submit_grid, wait_grid
from kun_hpc.cluster.executors import Task
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.cluster.scheduler import read_registry
from kun_hpc.cluster.slurm import SbatchExecutor, resources_for, submitit_parameters
from kun_hpc.config import ConfigError
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.iterate import Verdicts, check_source, verdict_of
from kun_hpc.run import make_executor
from tests.conftest import REPO, SAMPLE, sample_overrides, start_sandbox

STAGES = ["label", "point", "answer", "rules"]
N_SEED = 40
N_RECORDS = 20


def train_overrides(tmp: Path, model: Path) -> list[str]:
    return [f"train.base_model={model}", f"train.seed_data=[{tmp / 'seed.jsonl'}]", "train.max_steps=10",
            "train.save_steps=2", "train.micro_batch_size=4", "train.max_len=256", "train.lr=3e-3",
            "train.gradient_checkpointing=false"]  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_model) -> Path:
    """A finished run (grid and merge) over N_RECORDS records, and the seed file the rounds train on."""
    tmp = tmp_path_factory.mktemp("iterate")
    corpus = tmp / "skypile" / "part-0.jsonl"
    corpus.parent.mkdir()
    lines = next((SAMPLE / "skypile").glob("*.jsonl")).read_bytes().splitlines()[:N_RECORDS]
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    seed = json.loads((SAMPLE / "seed" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))[:N_SEED]
    (tmp / "seed.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in seed), "utf-8")
    engine = {"model": str(tiny_model), "backend": "transformers", "dtype": "float32", "enforce_eager": True}
    preset = {
        "run": {"name": "iterate-test"},
        "executor": {"kind": "inline"},
        "corpora": [{"name": "skypile", "format": "skypile", "paths": [str(corpus.parent)]}],
        "shard": {"records_per_shard": 8},
        "pipeline": {"stages": STAGES, "chunk_records": 8, "shards_per_task": 1},
        "label": {"engine": engine, "sampling": {"max_new_tokens": 8}, "reject_truncated": False},
        "point": {"engine": engine, "mode": "calibrated", "threshold": 0.5},
        "answer": {"engine": engine, "sampling": {"max_new_tokens": 12}, "reject_truncated": False},
        "rules": {"min_answer_chars": 4},  # the tiny model's answers are short: keep pairs to train on
    }
    OmegaConf.save(OmegaConf.create(preset), tmp / "preset.yaml")
    assert cli.main(["run", str(tmp / "preset.yaml"), f"run.dir={tmp / 'run'}"]) == 0
    return tmp


def kept_and_rejected(run: Path, stage: str) -> tuple[list[dict], list[dict]]:
    root = run / "stages" / stage
    kept = [r for p in list_shards(root) if p.relative_to(root).parts[0] not in ("rejected", "quarantine")
            for r in read_shard(p)]  # fmt: skip
    return kept, [r for p in list_shards(root / "rejected") for r in read_shard(p)]


def recount(run: Path) -> dict[str, str]:
    """Point's verdict per record id from its output files: kept -> good, rejected as a bad verdict -> bad."""
    kept, rejected = kept_and_rejected(run, "point")
    bad = {"verdict_bad", "score_below_threshold"}
    return {r["id"]: "good" for r in kept} | {r["id"]: "bad" if r["reject"]["reason"] in bad else "other"
                                             for r in rejected}  # fmt: skip


def dataset_rows(run: Path) -> list[dict]:
    return [r for p in sorted((run / "merge" / "dataset" / "jsonl").glob("part-*")) for r in read_shard(p)]


def model_files(model: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in model.iterdir()}


@pytest.mark.slow
def test_two_rounds_resumed_after_kills(source, tiny_model, capsys):
    run = source / "run"
    # the tiny model's calibrated scores crowd near 1 (P(好) >> P(差)) and a few training steps move them
    # a little: the rounds cut between the lowest and the median score the run kept (it cut at 0.5), so
    # the run's lowest goods turn bad (the changes the test recounts are not all zero) and most stay good
    kept = sorted(r["score"] for r in kept_and_rejected(run, "point")[0])
    cut = (kept[0] + kept[len(kept) // 2]) / 2
    overrides = [*train_overrides(source, tiny_model), f"point.threshold={cut:.6f}"]
    assert cli.main(["iterate", str(run), "--rounds", "1", *overrides]) == 0
    one = run / "iterate" / "round-1"
    model1 = one / "train" / "chat" / "model"
    before = model_files(model1), (one / "done" / "iterate" / "round.json").read_bytes()

    # round 2, killed while it trains: a checkpoint is there, the model is not
    two = run / "iterate" / "round-2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kun_hpc.cli", "iterate", str(run), "--rounds", "2", *overrides],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not any((two / "train" / "chat" / "checkpoints").glob("*")):
        assert proc.poll() is None and time.monotonic() < deadline, "round 2 never reached its training"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (two / "train" / "chat" / "model").exists()
    assert cli.main(["iterate", str(run), "--rounds", "2", *overrides]) == 0
    assert (model_files(model1), (one / "done" / "iterate" / "round.json").read_bytes()) == before

    report = json.loads((run / "iterate" / "report.json").read_text())
    rows = report["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    out = capsys.readouterr().out
    assert "kun-hpc iterate" in out and "iterate/round-2/train/chat/model" in out
    folders = {0: run, 1: one, 2: two}
    labelled = len(kept_and_rejected(run, "label")[0])
    assert report["labelled"] == labelled > 0
    seed = (source / "seed.jsonl").read_text(encoding="utf-8").splitlines()
    changed = 0
    for k in (1, 2):
        model = folders[k] / "train" / "chat" / "model"
        assert rows[k]["model"] == str(model)
        # this round's stages judged and polished with this round's model, and nothing else
        point, _ = kept_and_rejected(folders[k], "point")
        answer, _ = kept_and_rejected(folders[k], "answer")
        assert point and answer
        assert {r["prov"]["point"]["model"] for r in point} == {str(model)}
        assert {r["prov"]["answer"]["model"] for r in answer} == {str(model)}
        assert {r["prov"]["label"]["model"] for r in answer} == {str(tiny_model.resolve())}  # Label's stay
        # trained on the seed + the pairs the round before kept (its merged dataset), counted from the files
        pairs = dataset_rows(folders[k - 1])
        curated = (run / "iterate" / "round-0" if k == 1 else folders[1]) / "curated.jsonl"
        assert [json.loads(x) for x in curated.read_text("utf-8").splitlines()] == [
            {"instruction": p["instruction"], "input": "", "output": p["output"]} for p in pairs
        ]
        data = folders[k] / "train" / "chat" / "data"
        made = orjson.loads((data / "chat.report.json").read_bytes())
        assert made["in"] == len(seed) + len(pairs) and rows[k]["examples"] == made["out"]
        examples = [orjson.loads(x) for x in (data / "chat.jsonl").read_bytes().splitlines()]
        dropped = [orjson.loads(x) for x in (data / "chat.rejected.jsonl").read_bytes().splitlines()]
        from_curated = [e for e in examples if e["source"] == str(curated)]
        assert len(from_curated) + sum(d["source"] == str(curated) for d in dropped) == len(pairs) > 0
        outputs = {p["output"].strip() for p in pairs}
        assert all(e["target"].removesuffix("<|im_end|>") in outputs for e in from_curated)
        assert rows[k]["examples_by_source"] == dict(Counter(e["source"] for e in examples))
        # the verdicts and their changes, recounted by record id
        now, then = recount(folders[k]), recount(folders[k - 1])
        assert set(now) == set(then) and len(now) == labelled
        moved = Counter(f"{then[i]}->{now[i]}" for i in now if then[i] != now[i])
        assert rows[k]["changes"] == dict(moved)
        assert rows[k]["good_to_bad"] == moved["good->bad"] and rows[k]["bad_to_good"] == moved["bad->good"]
        assert rows[k]["verdicts"] == {v: sum(x == v for x in now.values()) for v in ("good", "bad", "other")}
        assert rows[k]["kept"] == len(dataset_rows(folders[k]))
        assert rows[k]["yield"] == round(rows[k]["kept"] / labelled, 6)
        changed += sum(moved.values())
    assert changed > 0, "no verdict moved in two rounds: the recount above compared nothing"
    assert rows[0]["verdicts"] == {
        v: sum(x == v for x in recount(run).values()) for v in ("good", "bad", "other")
    }

    # run again: both rounds are finished and skipped
    stamps = {k: model_files(folders[k] / "train" / "chat" / "model") for k in (1, 2)}
    assert cli.main(["iterate", str(run), "--rounds", "2", *overrides]) == 0
    assert "round 2: finished, skipped" in capsys.readouterr().err
    assert {k: model_files(folders[k] / "train" / "chat" / "model") for k in (1, 2)} == stamps
    assert json.loads((run / "iterate" / "report.json").read_text()) == report


def test_verdict_changes_by_id():
    ids = np.array([1, 5, 9, 12], dtype=np.uint64)
    before = Verdicts(ids, np.array([0, 0, 1, 2], dtype=np.uint8))
    after = Verdicts(ids, np.array([1, 0, 0, 2], dtype=np.uint8))
    assert after.changes(before) == {"good->bad": 1, "bad->good": 1}
    assert after.counts() == {"good": 2, "bad": 1, "other": 1}
    assert verdict_of({"id": "a"}) == 0
    assert verdict_of({"reject": {"reason": "score_below_threshold"}}) == 1
    assert verdict_of({"reject": {"reason": "verdict_unparseable"}}) == 2


def test_a_run_without_label_or_pairs_cannot_be_iterated():
    def stages(*names: str):
        return check_source(OmegaConf.create({"run": {"dir": "/r"}, "pipeline": {"stages": list(names)}}))

    with pytest.raises(ConfigError, match="no label stage"):
        stages("filter")
    with pytest.raises(ConfigError, match="no point stage after label"):
        stages("label", "answer")
    with pytest.raises(ConfigError, match="makes no pairs"):
        stages("label", "point")
    assert stages("filter", "label", "point", "answer", "rules") == ["point", "answer", "rules"]


@pytest.mark.slurm
def test_stage_arrays_wait_for_the_training_job_on_slurm(tmp_path):
    """What a round submits on Slurm: the first stage's arrays depend (afterok) on the training job, start
    only after it ended, and are cancelled, not run, when it fails (a stand-in job here: sleep, or a
    function that raises)."""
    start_sandbox()
    args = sample_overrides(
        tmp_path, "executor.kind=inline", "shard.records_per_shard=1000", f"pipeline.import_paths=[{REPO}]",
        "pipeline.stages=[tests.stages_for_tests:Tag]", "executor.slurm.time_min=5",
        "executor.slurm.mem_gb=0.5", "executor.poll_interval_s=1",
    )  # fmt: skip
    assert cli.main(["shard", *args]) == 0
    cfg = config.load(None, [*args, "executor.kind=slurm"])
    executor = make_executor(cfg)
    for fn, arg, ok in ((math.sqrt, -1, False), (time.sleep, 5, True)):
        fake = SbatchExecutor(folder=tmp_path / "train-logs")
        fake.update_parameters(**submitit_parameters(resources_for(cfg, "train"), "fake-train"))
        job = fake.submit(fn, arg).job_id
        submitted = time.time()
        training = Task("train", "train-chat", job=job, array=job, log_dir=str(tmp_path / "train-logs"))
        grid = submit_grid(plan_grid(cfg), executor, tmp_path / "logs", after=[training])
        wait_grid(grid, executor, tmp_path)
        deps = {e["dependency"] for e in read_registry(tmp_path) if e["job"] in grid.jobs}
        assert deps == {f"afterok:{job}"}
        units = grid.tasks["tag"]
        assert units and all(t.outcome.ok == ok for t in units)
        markers = [orjson.loads(p.read_bytes()) for p in (tmp_path / "done" / "tag").glob("*.json")]
        if ok:  # each started once the 5 s job had ended
            assert len(markers) == len(units) and min(m["timings"]["start"] for m in markers) > submitted + 5
        else:
            assert not markers and all("CANCELLED" in t.outcome.error for t in units)
