"""Workers run the code the command runs, and custom stages resolve from the working directory (issue 16).

A run started in a folder that holds another ``kun_hpc`` (a fake one that leaves a mark and crashes when
imported) and a custom stage module, with no ``PYTHONPATH``: the command and its workers import the
installed kun_hpc, never the folder's, and the stage ``mystage:Shout`` is found in the folder, as
docs/structure.md says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kun_hpc import config
from kun_hpc.io.shards import list_shards, read_shard
from tests.conftest import sample_overrides

KUN = str(Path(sys.executable).parent / "kun-hpc")
STAGE = """
from kun_hpc.stages.base import Stage


class Shout(Stage):
    name = "shout"

    def process(self, batch):
        return [{**r, "shout": r["text"][:4].upper()} for r in batch]
"""


def plant(folder: Path) -> Path:
    """The fake kun_hpc and the custom stage in ``folder``; the file the fake writes when imported."""
    mark = folder / "fake-kun_hpc-imported"
    (folder / "kun_hpc").mkdir()
    (folder / "kun_hpc" / "__init__.py").write_text(
        f"open({str(mark)!r}, 'a').write('imported\\n')\nraise SystemExit('the fake kun_hpc ran')\n"
    )
    (folder / "mystage.py").write_text(STAGE)
    return mark


def run_in(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    args = sample_overrides(
        folder / "run",
        "shard.records_per_shard=2000",
        "pipeline.stages=[mystage:Shout]",
        "merge.auto=false",
        *extra,
    )
    return subprocess.run(
        [KUN, "run", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_local_workers_import_the_commands_kun_hpc_and_find_a_custom_stage_in_the_cwd(tmp_path, monkeypatch):
    mark = plant(tmp_path)
    done = run_in(tmp_path, "executor.kind=local")
    assert done.returncode == 0, done.stderr
    assert not mark.exists(), "a worker imported the kun_hpc of its working directory"
    shards = list_shards(tmp_path / "run" / "stages" / "shout")
    records = [r for s in shards for r in read_shard(s)]
    assert len(records) == 3504 and all(r["shout"] == r["text"][:4].upper() for r in records)

    # the saved config says where the stage came from: a run is read from any directory
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading appends the run's import_paths to it
    assert config.load_run(run).pipeline.import_paths == [str(tmp_path)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    for command in ("status", "logs", "plan"):
        done = subprocess.run(
            [KUN, command, str(run)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (command, done.stderr)
    assert "shout" in done.stdout  # plan's table names the stage


@pytest.mark.slurm
def test_slurm_workers_import_the_commands_kun_hpc_and_find_a_custom_stage_in_the_cwd(tmp_path):
    from tests.conftest import SLURM_RUN_ARGS, start_sandbox

    start_sandbox()
    mark = plant(tmp_path)
    done = run_in(tmp_path, *SLURM_RUN_ARGS, "executor.poll_interval_s=1", "--wait")
    assert done.returncode == 0, done.stderr
    assert not mark.exists(), "a Slurm job imported the kun_hpc of its working directory"
    records = [r for s in list_shards(tmp_path / "run" / "stages" / "shout") for r in read_shard(s)]
    assert len(records) == 3504 and all(r["shout"] == r["text"][:4].upper() for r in records)
