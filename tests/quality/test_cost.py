"""Yield and cost (kun_hpc/quality/cost.py): task-hours and GPU-hours from constructed markers and
resources, the yield line, waste from constructed stage markers, and ``kun-hpc status``'s yield line on a
small merged run."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.funnel import funnel_row, yield_line
from kun_hpc.cluster.phases import phase_markers
from kun_hpc.quality.cost import (
    removed_duplicates,
    section,
    step_cost,
    summary_line,
    task_gpus,
    totals,
    waste,
)
from kun_hpc.quality.section import QualityContext
from kun_hpc.report import funnel
from kun_hpc.run import make_executor
from kun_hpc.run import merge_dataset as run_merge
from tests.conftest import SAMPLE

KUN = "pipeline.stages=[filter,label,point,answer,rules]"


def kun(tiny_model: Path, *extra: str):
    """A config of Kun's pipeline (the LLM stages need a model folder: the tiny model's)."""
    models = [f"{s}.engine.model={tiny_model}" for s in ("label", "point", "answer")]
    return config.load(None, [KUN, *models, *extra])


def marker(stage: str, seconds: float, job: str = "", **extra) -> dict:
    return {
        "stage": stage,
        "job": job,
        "timings": {"start": 0.0, "end": seconds, "seconds": seconds},
        **extra,
    }


@pytest.fixture(scope="module")
def slurm_cfg():
    """1 GPU per Slurm task by default, 2 for answer, none for the merge-assemble phase."""
    return config.load(
        None,
        [
            "executor.slurm.gpus_per_task=1",
            "executor.stage_resources.answer.gpus_per_task=2",
            "executor.stage_resources.merge-assemble.gpus_per_task=0",
        ],
    )


def test_gpus_come_from_the_resources_of_slurm_tasks_only(slurm_cfg):
    assert task_gpus(slurm_cfg, marker("answer", 1, "10_0")) == 2  # stage_resources.answer
    assert task_gpus(slurm_cfg, marker("rules", 1, "11_0")) == 1  # executor.slurm
    assert task_gpus(slurm_cfg, {**marker("", 1, "12_0"), "phase": "merge-assemble"}) == 0  # by phase name
    assert task_gpus(slurm_cfg, marker("answer", 1, "")) == 0  # the local or inline executor asks for none


def test_task_hours_gpu_hours_and_pairs_per_gpu_hour(slurm_cfg):
    answer = [marker("answer", 1800, "10_0"), marker("answer", 5400, "10_1")]
    row = step_cost(slurm_cfg, "answer", answer, {"in": 50, "out": 45})
    # (1800 + 5400) s = 2 task-hours; x 2 GPUs = 4 GPU-hours
    assert row == {
        "step": "answer",
        "tasks": 2,
        "task_hours": 2.0,
        "gpus_per_task": [2],
        "gpu_hours": 4.0,
        "in": 50,
        "out": 45,
    }
    rules = step_cost(slurm_cfg, "rules", [marker("rules", 360, "11_0")], {"in": 45, "out": 41})
    assert (rules["task_hours"], rules["gpu_hours"]) == (pytest.approx(0.1), pytest.approx(0.1))
    label = step_cost(slurm_cfg, "label", [marker("label", 3600, "")], None)  # run locally
    assert (label["task_hours"], label["gpu_hours"], label["gpus_per_task"]) == (1.0, 0.0, [0])
    assert label["in"] is None
    shard = step_cost(slurm_cfg, "shard", None, {"in": 60, "out": 60})  # no markers: nothing recorded
    assert shard["task_hours"] is None and shard["tasks"] is None and shard["out"] == 60
    t = totals([shard, label, answer_row := row, rules], 41)
    assert answer_row["gpu_hours"] == 4.0
    # 1 + 2 + 0.1 = 3.1 task-hours, 0 + 4 + 0.1 = 4.1 GPU-hours; 41 pairs: 10 per GPU-hour, 13.2 per task-hour
    assert t["tasks"] == 4 and t["task_hours"] == pytest.approx(3.1) and t["gpu_hours"] == pytest.approx(4.1)
    assert t["per_gpu_hour"] == pytest.approx(10.0) and t["per_task_hour"] == pytest.approx(41 / 3.1)
    assert summary_line(t) == (
        "final pairs per GPU-hour: 10 (41 pairs / 4.1 GPU-hours); "
        "per task-hour: 13.2 (41 pairs / 3.1 task-hours)"
    )


def test_no_gpu_configured_says_so_instead_of_a_number():
    cfg = config.load()
    rows = [step_cost(cfg, "answer", [marker("answer", 720, "")], None)]  # 0.2 task-hours, locally
    t = totals(rows, 1000)
    assert t["gpu_hours"] == 0 and t["per_gpu_hour"] is None and not t["gpus_configured"]
    assert summary_line(t) == (
        "final pairs per GPU-hour: n/a (0 GPUs configured); "
        "per task-hour: 5,000 (1,000 pairs / 0.2 task-hours)"
    )


def test_phase_markers_are_those_of_the_latest_run(tmp_path):
    def put(phase: str, unit: int, h: str, end: float) -> None:
        path = tmp_path / "done" / phase / f"{phase}-{unit:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            orjson.dumps({"phase": phase, "config_hash": h, "timings": {"end": end, "seconds": 1}})
        )

    put("merge-dedup-text.apply", 0, "new", 20)
    put("merge-dedup-text.apply", 1, "new", 21)
    put("merge-dedup-text.apply", 2, "old", 5)  # left by an earlier merge of more shards
    put("merge-dedup-text.signatures", 0, "new", 10)
    put("merge-dedup-textual.apply", 0, "new", 30)  # another phase whose name starts alike
    found = phase_markers(tmp_path, "merge-dedup-text")
    assert sorted((m["phase"], m["config_hash"]) for m in found) == [
        ("merge-dedup-text.apply", "new"),
        ("merge-dedup-text.apply", "new"),
        ("merge-dedup-text.signatures", "new"),
    ]
    assert phase_markers(tmp_path, "dedup-raw") == []


def stage_marker(stage: str, n_in: int, rejected: dict) -> dict:
    out = n_in - sum(rejected.values())
    return {
        "stage": stage,
        "in": n_in,
        "out": out,
        "rejected": rejected,
        "quarantined": {},
        "shards": [
            {
                "input": f"/x/{stage}/web/part-00000.jsonl.zst",
                "in": n_in,
                "out": out,
                "rejected": rejected,
                "quarantined": {},
            }
        ],
    }


def test_waste_counts_calls_spent_on_records_an_earlier_stage_could_drop(tiny_model):
    cfg = kun(tiny_model, "label.apply_rules=false")
    answer = [stage_marker("answer", 30, {"prompt_too_long": 2, "damaged_text": 1, "output_too_long": 5})]
    rules = [
        stage_marker("rules", 22, {"instruction_keyword": 3}),
        stage_marker("rules", 10, {"instruction_empty": 1, "answer_keyword": 4, "missing_field": 2}),
    ]
    rows = waste(cfg, [funnel_row("answer", answer, 1), funnel_row("rules", rules, 2)])
    by = {(w["stage"], w["reason"]): w for w in rows}
    assert list(by) == [
        ("rules", "instruction_*"),
        ("answer", "prompt_too_long"),
        ("answer", "damaged_text"),
        ("answer", "missing_field"),
    ]
    # 4 instructions the rules stage dropped had been judged by Point and answered: 2 calls each
    r = by[("rules", "instruction_*")]
    assert r["by_reason"] == {"instruction_empty": 1, "instruction_keyword": 3}
    assert (r["records"], r["wasted_on"], r["calls"]) == (4, ["point", "answer"], 8)
    assert r["check_on"] is False  # label.apply_rules=false: the waste is the config's
    # at Answer (its own call never made): Point's call was spent on each
    assert (by[("answer", "prompt_too_long")]["calls"], by[("answer", "damaged_text")]["calls"]) == (2, 1)
    m = by[("answer", "missing_field")]
    assert (m["records"], m["calls"]) == (0, 0)  # shown even when 0
    # output_too_long (Answer's own output), answer_keyword and the rules stage's missing_field are no waste
    assert sum(w["calls"] for w in rows) == 11


def test_waste_follows_the_pipeline(tiny_model):
    cfg = kun(tiny_model, "pipeline.stages=[filter,label,answer,rules]", "answer.max_prompt_tokens=null")
    rows = waste(cfg, [funnel_row("rules", [stage_marker("rules", 5, {"instruction_keyword": 5})], 1)])
    by = {(w["stage"], w["reason"]): w for w in rows}
    assert by[("rules", "instruction_*")]["calls"] == 5  # only Answer lies between Label and rules
    assert by[("answer", "prompt_too_long")]["calls_per_record"] == 0  # nothing between Label and Answer
    # no Answer budget without answer.max_prompt_tokens: Label checks nothing
    assert by[("answer", "prompt_too_long")]["check_on"] is False
    assert waste(config.load(None, ["pipeline.stages=[filter]"]), []) == []


def test_removed_duplicates_cost_the_calls_after_label(tiny_model):
    cfg = kun(tiny_model)
    apply = [{"in": 9, "out": 5, "rejected": {"duplicate_exact": 3, "near_duplicate": 1}, "quarantined": {}}]
    assert removed_duplicates(cfg, [("instruction", apply)]) == {
        "records": 4,
        "calls_per_record": 2,
        "wasted_on": ["point", "answer"],
        "calls": 8,
    }
    assert removed_duplicates(cfg, [("pair", apply)]) is None


# ------------------------------------------------------------------------------------- a small merged run
@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cost")
    data = tmp / "data"
    data.mkdir()
    lines = (SAMPLE / "skypile" / "2020-40_zh_head_0000.jsonl").read_bytes().splitlines()[:60]
    (data / "part.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run = tmp / "run"
    overrides = [
        f"run.dir={run}",
        "executor.kind=inline",
        f"corpora=[{{name: web, format: skypile, paths: [{data}]}}]",
        "shard.records_per_shard=30",
        "dedup.partitions=2",
        "pipeline.stages=[tests.stages_for_tests:Synth]",
        "merge.auto=false",
    ]
    assert cli.main(["run", *overrides]) == 0
    cfg = config.load(str(run / "config.yaml"))
    assert yield_line(cfg) == "yield: not merged yet (kun-hpc merge RUN_DIR)"
    result = run_merge(cfg, make_executor(cfg))
    ctx = QualityContext(
        cfg,
        result.report,
        result.dataset,
        result.inputs.kind,
        result.assemble,
        result.dedup,
        funnel(cfg, result),
    )
    return run, cfg, ctx


@pytest.mark.slow
def test_cost_section_and_the_status_line_of_a_merged_run(merged):
    run, cfg, ctx = merged
    s = section(ctx)
    steps = [r["step"] for r in s.data["steps"]]
    assert steps == ["shard", "synth", "merge-dedup-instruction", "merge-assemble"]
    # every marker this run wrote, read here from the files: seconds / 3600
    done = [orjson.loads(p.read_bytes()) for p in (run / "done").glob("*/*.json")]
    hours = sum(m["timings"]["seconds"] for m in done) / 3600
    rows = sum(m["rows"] for m in ctx.assemble)
    t = s.data["totals"]
    assert t["tasks"] == len(done) and t["task_hours"] == pytest.approx(hours) and t["records"] == rows > 0
    synth = s.data["steps"][1]
    assert synth["tasks"] == len(list((run / "done" / "synth").glob("*.json")))
    report = orjson.loads((run / "merge" / "report" / "report.json").read_bytes())
    assert (synth["in"], synth["out"]) == (report["funnel"][1]["in"], report["funnel"][1]["out"])
    assert t["gpu_hours"] == 0 and t["per_gpu_hour"] is None  # inline: no GPU asked for
    assert t["per_task_hour"] == pytest.approx(rows / hours)
    assert s.data["waste"] == [] and len(s.tables) == 1  # Synth is no Label: no waste rule applies
    # the report keeps each section's data under quality.<key> (kun_hpc/report/write.py): status reads it
    path = run / "merge" / "report" / "report.json"
    path.write_bytes(orjson.dumps({**report, "quality": {"cost": s.data}}))
    line = yield_line(cfg)
    assert line == f"yield: {s.data['summary']}"
    assert line.startswith("yield: final pairs per GPU-hour: n/a (0 GPUs configured); per task-hour: ")
    assert f"({rows:,} pairs / " in line
    assert report["quality"]["cost"]["summary"] == s.data["summary"]  # the merge's own report has them
    without = {k: v for k, v in report.items() if k != "quality"}  # merge.quality.enabled=false, or older
    path.write_bytes(orjson.dumps(without))
    assert "holds no cost figures" in yield_line(cfg)
    path.write_bytes(b"{")
    assert yield_line(cfg).startswith(f"yield: {path} is not valid JSON")
