"""The stage of your own that docs/structure.md shows runs as it says (issue 16): written beside the working
directory, named ``mystage:Shout`` with no ``PYTHONPATH``, its option read, its rejects counted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from kun_hpc import cli, config
from kun_hpc.io.markers import read_marker
from kun_hpc.io.shards import list_shards, read_shard
from tests.conftest import sample_overrides

DOC = Path(__file__).resolve().parents[2] / "docs" / "structure.md"


@pytest.mark.slow
def test_the_documented_custom_stage_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)[1]
    (tmp_path / "mystage.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    # the run appends pipeline.import_paths to sys.path; no other test's folder with a mystage.py comes first
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p) / "mystage.py").exists()])
    monkeypatch.delitem(sys.modules, "mystage", raising=False)
    args = sample_overrides(
        tmp_path / "run",
        "executor.kind=inline",
        "pipeline.stages=[mystage:Shout]",
        "pipeline.options.shout.chars=8",
        "merge.auto=false",
    )
    assert cli.main(["run", *args]) == 0
    assert config.load_run(tmp_path / "run").pipeline.import_paths == [str(tmp_path)]
    inputs = [r for p in list_shards(tmp_path / "run" / "shards") for r in read_shard(p)]
    kept = [r for p in list_shards(tmp_path / "run" / "stages" / "shout") for r in read_shard(p)]
    assert [{k: v for k, v in r.items() if k != "prov"} for r in kept] == [
        {**r, "shout": r["text"][:8].upper()} for r in inputs if r["text"].strip()
    ]
    marker = read_marker(tmp_path / "run", "shout", "shout-00000")
    assert marker["in"] >= marker["out"] > 0
    sys.modules.pop("mystage", None)
