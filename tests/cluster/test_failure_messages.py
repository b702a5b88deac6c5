"""A failure is shown by its exception, ``Type: message``, everywhere (issue 16): the end-of-run lines, the
<run>/failed/ record, ``status`` and ``logs``, on the inline and the local executor; a Slurm job's too when
its result holds the exception."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from submitit.core.utils import cloudpickle_dump

from kun_hpc import cli
from kun_hpc.cluster.executors import exception_line, job_error
from kun_hpc.cluster.status import local_failure_file
from tests.conftest import sample_overrides


def formatted(raise_it) -> str:
    try:
        raise_it()
    except Exception:
        return traceback.format_exc()
    raise AssertionError("did not raise")


def test_the_exception_line_of_a_traceback():
    def chained():
        try:
            {}["k"]
        except KeyError as e:
            raise RuntimeError("while reading\nline two") from e

    assert (
        exception_line(formatted(lambda: int("x")))
        == "ValueError: invalid literal for int() with base 10: 'x'"
    )
    assert exception_line(formatted(chained)) == "RuntimeError: while reading"  # the last of the chain
    assert exception_line("") == ""


def test_a_failed_jobs_result_pickle_gives_its_exception(tmp_path):
    trace = formatted(lambda: (_ for _ in ()).throw(ValueError("boom 42")))
    cloudpickle_dump(("error", trace), tmp_path / "r.pkl")
    assert job_error(tmp_path / "r.pkl").splitlines()[0] == "ValueError: boom 42"
    cloudpickle_dump(("success", 3), tmp_path / "ok.pkl")
    assert job_error(tmp_path / "ok.pkl") == job_error(tmp_path / "missing.pkl") == ""


@pytest.mark.parametrize("kind", ["inline", pytest.param("local", marks=pytest.mark.slow)])
def test_a_failing_stage_is_shown_by_its_exception(kind, tmp_path, capsys):
    args = sample_overrides(
        tmp_path,
        f"executor.kind={kind}",
        "shard.records_per_shard=2000",
        "pipeline.stages=[tests.stages_for_tests:Boom]",
        "merge.auto=false",
    )
    assert cli.main(["run", *args]) == 1
    err = capsys.readouterr().err
    assert "failed: boom-00000: ValueError: boom 42" in err
    assert "FailedJobError" not in err
    record = local_failure_file(tmp_path, "boom", "boom-00000").read_text().splitlines()
    assert next(line for line in record if not line.startswith("log: ")) == "ValueError: boom 42"
    assert cli.main(["status", *args]) == 0
    assert "boom-00000: failed local run: ValueError: boom 42" in capsys.readouterr().out
    assert cli.main(["logs", *args]) == 0
    logs = capsys.readouterr().out
    assert "==> boom-00000 (local run: ValueError: boom 42)" in logs
    if kind == "local":  # the unit's own log, in the unit's folder
        assert Path(
            logs.split("==> boom-00000 (local run: ValueError: boom 42) ")[1].split()[0]
        ).parent.name == ("boom-00000")
