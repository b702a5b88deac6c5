"""The Slurm layer against the real sandbox cluster (slurm/sandbox/start.sh, MaxArraySize 4 here).

Stages are the small real ones in tests/stages_for_tests.py; jobs import them from the repo root.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.cluster.scheduler import expand_array_ids, read_registry
from kun_hpc.cluster.slurm import parse_job_id, submitit_parameters
from kun_hpc.cluster.status import unit_statuses
from kun_hpc.core.hashing import file_sha256
from kun_hpc.io.shards import list_shards, read_shard
from tests.conftest import REPO, sample_overrides

pytestmark = pytest.mark.slurm
MAX_ARRAY = 4
STAGES = "pipeline.stages=[tests.stages_for_tests:Upper,tests.stages_for_tests:Tag]"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    os.environ.setdefault("SLURM_CONF", str(REPO / ".slurm-sandbox" / "etc" / "slurm.conf"))
    env = {**os.environ, "SLURM_MAX_ARRAY_SIZE": str(MAX_ARRAY)}
    subprocess.run([str(REPO / "slurm" / "sandbox" / "start.sh")], env=env, check=True, capture_output=True)
    os.environ["PYTHONPATH"] = str(REPO)  # jobs import tests.stages_for_tests
    yield


def slurm_args(run: Path, *extra: str) -> list[str]:
    return sample_overrides(
        run,
        "executor.kind=slurm",
        "executor.poll_interval_s=1",
        "shard.records_per_shard=400",
        "executor.slurm.time_min=10",
        "executor.slurm.mem_gb=0.5",
        "pipeline.chunk_records=50",
        "merge.auto=false",  # the merge job has a test of its own
        *extra,
    )


def stage_records(run: Path, stage: str) -> dict[str, list[dict]]:
    """Kept and rejected records per shard, without ``prov`` (which names the config hash)."""
    root = run / "stages" / stage
    return {
        str(p.relative_to(root)): [{k: v for k, v in r.items() if k != "prov"} for r in read_shard(p)]
        for p in list_shards(root)
    }


def stage_digests(run: Path, stage: str) -> dict[str, str]:
    root = run / "stages" / stage
    return {str(p.relative_to(root)): file_sha256(p) for p in list_shards(root)}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """The reference: the same chain run inline, with no faults."""
    run = tmp_path_factory.mktemp("clean")
    args = sample_overrides(
        run, "executor.kind=inline", "shard.records_per_shard=400", "pipeline.chunk_records=50", STAGES
    )
    assert cli.main(["run", *args]) == 0
    return run


def test_parse_job_id_survives_site_wrappers():
    assert parse_job_id("12345\n") == "12345"
    assert parse_job_id("12345;cluster-a\n") == "12345"
    assert parse_job_id("Welcome to HPC!\nYour quota: 3 TB\n777\n") == "777"
    assert parse_job_id("sbatch: info: routing to gpu\nSubmitted batch job 4242 on cluster x\n") == "4242"
    with pytest.raises(Exception, match="job id"):
        parse_job_id("sbatch: error: Batch job submission failed")


def test_sacct_rows_of_never_started_array_tasks_are_expanded():
    assert expand_array_ids("123_[0-2,7%2]") == ["123_0", "123_1", "123_2", "123_7"]
    assert expand_array_ids("55_4") == ["55_4"] and expand_array_ids("60") == ["60"]


def test_chains_chunk_arrays_cancel_dependents_of_a_failure_and_rerun_only_it(tmp_path, clean_run, capsys):
    run = tmp_path / "run"
    heal = tmp_path / "heal"
    args = slurm_args(
        run,
        STAGES,
        "pipeline.options.upper.fail_on_corpus=wanjuan",
        f"pipeline.options.upper.heal_file={heal}",
    )
    code = cli.main(["run", "--wait", *args])
    assert code == 1
    units = plan_grid(config.load(None, args)).units
    n = len(units["upper"])
    assert n == 11
    entries = [e for e in read_registry(run) if e["stage"] in ("upper", "tag")]
    # 11 units per stage under MaxArraySize 4: 3 arrays per stage, the second stage chained by aftercorr
    assert len(entries) == 2 * -(-n // MAX_ARRAY)
    assert all(e["dependency"] is None for e in entries if e["stage"] == "upper")
    chained = [e for e in entries if e["stage"] == "tag"]
    assert [e["dependency"] for e in chained] == [
        f"aftercorr:{e['job']}" for e in entries if e["stage"] == "upper"
    ]
    rows = {r.unit: r for r in unit_statuses(config.load(None, args))}
    wanjuan = [u.index for u in units["upper"] if "/wanjuan/" in u.shards[0].input]
    for u in units["upper"]:
        assert rows[u.name].state == ("failed" if u.index in wanjuan else "done"), rows[u.name]
    for u in units["tag"]:
        r = rows[u.name]
        if u.index in wanjuan:
            assert r.state == "cancelled" and f"upstream upper-{u.index:05d} failed" in r.why, r
        else:
            assert r.state == "done", r
    capsys.readouterr()
    assert cli.main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert re.search(r"upper\s+│\s+7\s+│\s+0\s+│\s+0\s+│\s+4", out), out
    assert cli.main(["logs", *args]) == 0
    logs = capsys.readouterr().out
    assert logs.count("planned failure on wanjuan/") >= 4 and "upper-0000" in logs
    # re-run: only the failed chains are submitted
    heal.write_text("ok")
    assert cli.main(["run", "--wait", *args]) == 0
    err = capsys.readouterr().err
    assert "pending units: upper=4, tag=4" in err
    again = [e for e in read_registry(run) if e["stage"] in ("upper", "tag")][len(entries) :]
    assert sorted(u for e in again for u in e["units"]) == sorted(
        [f"upper-{i:05d}" for i in wanjuan] + [f"tag-{i:05d}" for i in wanjuan]
    )
    assert stage_records(run, "tag") == stage_records(clean_run, "tag")  # the options differ: so does prov
    assert stage_records(run, "upper") == stage_records(clean_run, "upper")


def _running_job(run: Path, stage: str, min_chunks: int, timeout: float = 120) -> tuple[str, str, int]:
    """Wait until a unit of ``stage`` runs and has committed ``min_chunks`` chunks; return (task, unit,
    chunks committed when seen). Polls cheaply so the fault lands soon after the chunks are seen."""
    deadline = time.time() + timeout
    chunk_dirs = {
        u.name: Path(u.shards[0].output + ".chunks")
        for u in plan_grid(config.load(str(run / "config.yaml"))).units[stage]
    }
    while time.time() < deadline:
        entries = [e for e in read_registry(run) if e["stage"] == stage]
        tasks = {u: t for e in entries for u, t in zip(e["units"], e["tasks"], strict=True)}
        running = set(
            subprocess.run(
                ["squeue", "-h", "-r", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True
            ).stdout.split()
        )
        for unit, chunks in chunk_dirs.items():
            seen = len(list(chunks.glob("chunk-*.json")))
            if seen >= min_chunks and tasks.get(unit) in running:
                return tasks[unit], unit, seen
        time.sleep(0.2)
    raise AssertionError(f"no {stage} unit got {min_chunks} chunks in {timeout}s")


@pytest.mark.parametrize("fault", ["scontrol_requeue", "usr2_timeout", "kill_9"])
def test_a_unit_interrupted_mid_way_resumes_without_losing_or_duplicating(tmp_path, clean_run, fault):
    run = tmp_path / "run"
    # 8 chunks of 2.5 s per unit, the fault sent once 2 are committed: ~15 s of work left, three times
    # Slurm's KillWait (5 s), so a requeue's SIGKILL lands before the unit could finish (submitit ignores
    # the SIGTERM before it)
    args = slurm_args(run, STAGES, "pipeline.options.upper.sleep_s=2.5", "executor.slurm.signal_delay_s=30")
    # sharded inline first (what the test is about is the stages' units; three shard arrays cost ~25 s)
    assert cli.main(["shard", *args, "executor.kind=inline"]) == 0
    assert cli.main(["run", *args]) == 0  # submit and return
    job, victim, committed = _running_job(run, "upper", 2)
    if fault == "scontrol_requeue":
        subprocess.run(["scontrol", "requeue", job], check=True)
    elif fault == "usr2_timeout":  # what Slurm sends --signal seconds before the time limit
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    else:
        pids = subprocess.run(
            ["pgrep", "-f", "submitit.core._submit"], capture_output=True, text=True
        ).stdout.split()
        victims = [p for p in pids if _array_task(p) == job]
        assert victims, "could not find the unit's worker process"
        for p in victims:
            os.kill(int(p), 9)
    assert cli.main(["status", "--watch", *args]) in (0, 1)
    if fault == "kill_9":  # the job failed; the re-run picks up from the committed chunks
        assert any(r.state == "failed" for r in unit_statuses(config.load(None, args)))
        assert cli.main(["run", "--wait", *args]) == 0
    rows = unit_statuses(config.load(None, args))
    assert all(r.state == "done" for r in rows), [r for r in rows if r.state != "done"]
    # same records in the same order: nothing lost, nothing duplicated (prov differs: sleep_s is an option)
    assert stage_records(run, "upper") == stage_records(clean_run, "upper")
    assert stage_records(run, "tag") == stage_records(clean_run, "tag")
    marker = orjson.loads((run / "done" / "upper" / f"{victim}.json").read_bytes())
    resumed_at = marker["shards"][0]["resumed_at_chunk"]
    assert resumed_at >= committed, f"the unit should resume after its {committed} committed chunks"
    if fault != "kill_9":
        assert marker["restarts"] >= 1, "the interrupted unit should have been requeued by Slurm"


def _environ(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except OSError:
        return ""


def _array_task(pid: str) -> str:
    env = dict(line.split("=", 1) for line in _environ(pid).splitlines() if "=" in line)
    return f"{env.get('SLURM_ARRAY_JOB_ID')}_{env.get('SLURM_ARRAY_TASK_ID')}"


def test_shard_and_reshard_run_as_arrays_and_match_inline(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["shard", *slurm_args(run)]) == 0
    ref = tmp_path / "ref"
    assert (
        cli.main(["shard", *sample_overrides(ref, "executor.kind=inline", "shard.records_per_shard=400")])
        == 0
    )
    assert [file_sha256(p) for p in list_shards(run / "shards")] == [
        file_sha256(p) for p in list_shards(ref / "shards")
    ]
    assert cli.main(["reshard", *slurm_args(run, "reshard.num_shards=9")]) == 0
    assert len(list_shards(run / "reshard")) == 9
    stages = {e["stage"] for e in read_registry(run)}
    assert {"shard-wudao", "reshard"} <= stages


def test_hostile_path_and_values_are_quoted_not_executed(tmp_path):
    weird = tmp_path / "run dir; touch PWNED $(touch PWNED2) 'q' \"dq\""
    args = slurm_args(
        weird, STAGES, "executor.slurm.extra_flags.comment=a b; touch PWNED3", "merge.auto=true"
    )
    assert cli.main(["run", "--wait", *args]) == 0
    assert all(r.state == "done" for r in unit_statuses(config.load(None, args)))
    assert (weird / "merge" / "report" / "report.json").is_file()  # the merge's arrays ran there too
    assert not any(tmp_path.rglob("PWNED*")) and not (Path.cwd() / "PWNED").exists()
    res = {**config.load(None, []).executor.slurm, "extra_flags": {"comment": "x\n#SBATCH --wrap=evil"}}
    with pytest.raises(ValueError, match="control character"):
        submitit_parameters(res, "kun-x")


def test_plan_counts_sbatch_calls_under_max_array_size(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        cli.main(["shard", *sample_overrides(run, "executor.kind=inline", "shard.records_per_shard=100")])
        == 0
    )
    capsys.readouterr()
    args = sample_overrides(
        run,
        "executor.kind=slurm",
        "shard.records_per_shard=100",
        STAGES,
        "pipeline.throughput.upper=50",
        "executor.stage_resources.tag.gpus_per_task=2",
    )
    assert cli.main(["plan", *args]) == 0
    out = capsys.readouterr().out
    units = len(plan_grid(config.load(None, args)).units["upper"])
    assert units == 37  # 3504 records in shards of 100, per input file
    assert f"total sbatch calls: {2 * -(-units // MAX_ARRAY)}" in out
    assert "unknown: set pipeline.throughput.tag" in out


def test_cancel_stops_every_job_of_the_run_and_status_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    args = slurm_args(run, STAGES, "executor.slurm.extra_flags.hold=true")  # held: nothing starts
    assert cli.main(["shard", *args[:-1], "executor.kind=inline"]) == 0  # held shard jobs would never end
    assert cli.main(["run", *args]) == 0
    assert cli.main(["run", *args]) == 1  # a second submission while queued would run units twice
    assert "still queued or running" in capsys.readouterr().err
    assert cli.main(["cancel", *args]) == 0
    jobs = {e["job"] for e in read_registry(run) if e["stage"] in ("upper", "tag")}
    assert f"scancel {' '.join(sorted(jobs))}" in capsys.readouterr().err
    deadline = time.time() + 60
    while time.time() < deadline:
        states = {r.state for r in unit_statuses(config.load(None, args))}
        if states == {"cancelled"}:
            break
        time.sleep(1)
    assert states == {"cancelled"}


def merged_rows(run: Path) -> list[dict]:
    rows = [r for p in list_shards(run / "merge" / "dataset" / "jsonl") for r in read_shard(p)]
    return sorted(({k: v for k, v in r.items() if k != "prov"} for r in rows), key=lambda r: r["id"])


def test_run_submits_the_merge_as_a_job_that_waits_for_every_unit(tmp_path, clean_run, capsys):
    run, heal = tmp_path / "run", tmp_path / "heal"
    fail = ("pipeline.options.upper.fail_on_corpus=wanjuan", f"pipeline.options.upper.heal_file={heal}")
    args = slurm_args(run, STAGES, *fail, "merge.auto=true")
    assert cli.main(["run", *args]) == 0  # submits the arrays and the merge job, returns
    first = re.search(r"merge job (\d+) starts when", capsys.readouterr().err).group(1)
    assert cli.main(["merge", *args]) == 1  # a second merge while the run's jobs are queued
    assert "still queued or running" in capsys.readouterr().err
    # a unit fails: Slurm cancels the merge job (afterok, --kill-on-invalid-dep)
    assert cli.main(["status", "--watch", *args]) == 1
    assert re.search(rf"merge job {first}: CANCELLED", capsys.readouterr().err)
    assert not (run / "merge").exists()

    heal.write_text("ok")
    assert cli.main(["run", *args]) == 0  # the failed chains again, and a new merge job after them
    second = re.search(r"merge job (\d+) starts when", capsys.readouterr().err).group(1)
    merges = [e for e in read_registry(run) if e["stage"] == "merge"]
    assert [e["job"] for e in merges] == [first, second]
    entries = read_registry(run)
    resubmitted = [e["job"] for e in entries[entries.index(merges[0]) :] if e["stage"] in ("upper", "tag")]
    assert resubmitted and merges[1]["dependency"] == "afterok:" + ":".join(resubmitted)
    assert cli.main(["status", "--watch", *args]) == 0  # follows the merge job to its end
    assert f"merge job {second}: COMPLETED" in capsys.readouterr().err
    # its phases ran as arrays of their own, submitted from inside the merge job
    stages = {e["stage"] for e in read_registry(run)}
    assert {"merge-dedup-text.signatures", "merge-dedup-text.apply", "merge-assemble"} <= stages
    assert merged_rows(run) == merged_rows(clean_run) and merged_rows(run)
    report = orjson.loads((run / "merge" / "report" / "report.json").read_bytes())
    assert report["dataset"]["rows"] == len(merged_rows(run))
