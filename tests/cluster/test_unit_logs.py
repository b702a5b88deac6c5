"""Every unit an executor runs writes its own start and end lines to its log (issue 16, item 10), not only
stage units: here a shard unit and the merge's phase units, run by the local executor (real worker
processes, their real ``.err`` files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kun_hpc import cli
from kun_hpc.io.shards import read_manifest, read_shard
from tests.conftest import sample_overrides

START = r"start: (.+), host \S+, pid \d+"
DONE = r"done: (.+); (\d+) records this attempt, [\d.]+ rec/s, elapsed [\d.]+ s"


def unit_logs(folder: Path) -> dict[str, list[str]]:
    """``{unit: its kun-hpc lines}`` of the ``.err`` logs under ``folder``."""
    out: dict[str, list[str]] = {}
    for log in sorted(folder.rglob("*.err")):
        for line in log.read_text(errors="replace").splitlines():
            m = re.match(r"kun-hpc unit (\S+): (.*)", line)
            if m:
                out.setdefault(m[1], []).append(m[2])
    return out


@pytest.mark.slow
def test_shard_and_merge_phase_units_log_their_start_and_end(tmp_path):
    a = sample_overrides(
        tmp_path,
        "executor.kind=local",
        "executor.max_parallel=4",
        "shard.records_per_shard=2000",
        "pipeline.stages=[tests.stages_for_tests:Upper]",
        "merge.auto=false",
        "merge.dedup_by=[text]",
    )
    assert cli.main(["run", *a]) == 0
    manifest = read_manifest(tmp_path / "shards" / "skypile")
    shard_logs = unit_logs(tmp_path / "logs" / "shard")
    shard_logs = {k: v for k, v in shard_logs.items() if k.startswith("shard-skypile-")}
    assert shard_logs, "every shard unit logs"
    read = 0
    for unit, lines in shard_logs.items():
        assert len(lines) == 2, lines
        what = re.fullmatch(START, lines[0])[1]
        assert what.startswith(f"shard corpus skypile, {manifest['inputs'][0]['path']}")
        work = tmp_path / "shards" / "skypile" / "_work" / unit.removeprefix("shard-skypile-")
        assert f"-> {work}, config " in what
        done = re.fullmatch(DONE, lines[1])
        n = int(done[2])
        assert done[1].startswith(f"in {n} out ")
        read += n
    assert read == manifest["read"]  # the units' records, counted by the manifest apart from the logs

    assert cli.main(["merge", *a]) == 0
    phases = unit_logs(tmp_path / "logs")
    apply = [lines for unit, lines in phases.items() if unit.startswith("merge-dedup-text.apply-")]
    assemble = [lines for unit, lines in phases.items() if unit.startswith("merge-assemble-")]
    assert apply and assemble
    for lines in apply + assemble:
        assert len(lines) == 2 and re.fullmatch(START, lines[0]) and re.fullmatch(DONE, lines[1]), lines
    assert all(" -> " in re.fullmatch(START, lines[0])[1] for lines in apply + assemble)
    # what the apply units kept is what the assemble units wrote: the dataset's rows, read from its files
    rows = sum(
        1 for p in (tmp_path / "merge" / "dataset" / "jsonl").rglob("*.jsonl.zst") for _ in read_shard(p)
    )
    assert rows > 0
    assert sum(int(re.search(r"rows (\d+)", lines[1])[1]) for lines in assemble) == rows
    assert sum(int(re.search(r"done: in \d+ out (\d+)", lines[1])[1]) for lines in apply) == rows
