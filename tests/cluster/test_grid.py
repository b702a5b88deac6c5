"""The work grid on the inline executor: markers, config hashes, pending propagation, accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.grid import pending_units, plan_grid
from kun_hpc.cluster.status import unit_statuses
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import read_shard
from tests.conftest import sample_overrides

STAGES = "pipeline.stages=[tests.stages_for_tests:Upper,tests.stages_for_tests:Tag]"


def args(run: Path, *extra: str) -> list[str]:
    return sample_overrides(
        run,
        "executor.kind=inline",
        "shard.records_per_shard=400",
        "pipeline.chunk_records=64",
        STAGES,
        "merge.auto=false",  # nothing here reads the merge
        *extra,
    )


def pending(run: Path, *extra: str) -> dict[str, list[int]]:
    grid = plan_grid(config.load(None, args(run, *extra)))
    return {s: [u.index for u in us] for s, us in pending_units(grid).items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One complete run for the module's tests (the one that deletes a marker runs the unit again)."""
    run = tmp_path_factory.mktemp("grid")
    assert cli.main(["run", *args(run)]) == 0
    return run


@pytest.mark.slow
def test_every_stage_keeps_the_accounting_invariant(run):
    grid = plan_grid(config.load(None, args(run)))
    for stage in grid.stages:
        for u in grid.units[stage]:
            m = read_marker(run, stage, u.name)
            assert m["in"] == m["out"] + sum(m["rejected"].values()) + sum(m["quarantined"].values())
            for s in m["shards"]:
                kept = list(read_shard(s["output"]))
                assert len(kept) == s["out"]
                assert all(r["prov"][stage]["config_hash"] == u.config_hash for r in kept)
    tag = [read_marker(run, "tag", u.name) for u in grid.units["tag"]]
    assert sum(m["rejected"].get("odd_length", 0) for m in tag) > 0


@pytest.mark.slow
def test_nothing_is_pending_after_a_complete_run(run):
    assert pending(run) == {"upper": [], "tag": []}


@pytest.mark.slow
def test_changing_a_stage_reruns_it_and_everything_after_it(run):
    assert pending(run, "pipeline.options.tag.note=x") == {"upper": [], "tag": list(range(11))}
    assert pending(run, "pipeline.options.upper.sleep_s=0") == {
        "upper": list(range(11)),
        "tag": list(range(11)),
    }
    assert pending(run, "executor.kind=local", "executor.max_parallel=1") == {"upper": [], "tag": []}


@pytest.mark.slow
def test_a_missing_upstream_marker_reruns_that_chain_only(run, capsys):
    (run / "done" / "upper" / "upper-00004.json").unlink()
    assert pending(run) == {"upper": [4], "tag": [4]}
    assert cli.main(["run", *args(run)]) == 0
    assert "pending units: upper=1, tag=1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failing_unit_skips_its_chain_and_the_rerun_finishes_it(tmp_path, capsys):
    heal = tmp_path / "heal"
    extra = ("pipeline.options.upper.fail_on_corpus=skypile", f"pipeline.options.upper.heal_file={heal}")
    assert cli.main(["run", *args(tmp_path, *extra)]) == 1
    err = capsys.readouterr().err
    assert "failed: upper-00000: RuntimeError: planned failure on skypile/" in err
    assert "not run (tag): tag-00000, tag-00001, tag-00002: an upstream unit failed" in err
    # no scheduler remembers a local run: status and logs read the failures it recorded
    cli.main(["status", *args(tmp_path, *extra)])
    out = capsys.readouterr().out
    assert "upper-00000: failed local run: RuntimeError: planned failure on skypile/" in out
    assert "tag-00000: cancelled not run: upstream upper-00000 failed" in out
    rows = unit_statuses(config.load(None, args(tmp_path, *extra)))
    assert sorted(r.state for r in rows if r.state != "done") == ["cancelled"] * 3 + ["failed"] * 3
    assert cli.main(["logs", *args(tmp_path, *extra)]) == 0
    logs = capsys.readouterr().out
    assert logs.count("==> upper-0000") == 3 and "Traceback" in logs and "tag-0000" not in logs
    heal.write_text("")
    assert cli.main(["run", *args(tmp_path, *extra)]) == 0
    assert "pending units: upper=3, tag=3" in capsys.readouterr().err
    assert not list((tmp_path / "failed").rglob("*.log")), "a unit that succeeded keeps no failure record"
    assert all(r.state == "done" for r in unit_statuses(config.load(None, args(tmp_path, *extra))))


def test_an_unknown_stage_is_a_config_error(tmp_path, capsys):
    assert cli.main(["run", *args(tmp_path, "pipeline.stages=[nope]")]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err
