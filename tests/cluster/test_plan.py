"""``kun-hpc plan --gpus N``: the wall clock on N GPUs from the printed GPU hours, the units and the limits on
tasks at once; and the records the stages see after the raw dedup (issue 16, item 9)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from kun_hpc import cli
from kun_hpc.io.shards import read_shard
from tests.conftest import sample_overrides

UPPER = "pipeline.stages=[tests.stages_for_tests:Upper]"


def plan_args(run: Path, *extra: str) -> list[str]:
    return sample_overrides(
        run,
        "executor.kind=inline",
        "shard.records_per_shard=400",
        UPPER,
        "executor.stage_resources.upper.gpus_per_task=1",  # Upper stands for a GPU stage here
        "pipeline.throughput.upper=0.01",
        "executor.slurm.max_array_size=1001",
        *extra,
    )


def printed_plan(capsys, run: Path, *extra: str) -> tuple[dict[str, str], str]:
    """The plan's row of stage upper (column -> cell) and its whole output."""
    capsys.readouterr()
    assert cli.main(["plan", *plan_args(run), *extra]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if "┃ stage" in line)
    row = next(line for line in lines if line.startswith("│ upper"))
    cells = lambda line: [c.strip() for c in line.strip("┃│ ").split("┃" if "┃" in line else "│")]  # noqa: E731
    return dict(zip(cells(header), cells(row), strict=True)), out


@pytest.mark.slow
def test_the_wall_clock_on_1_and_4_gpus_follows_the_gpu_hours_units_and_array_throttle(tmp_path, capsys):
    assert cli.main(["shard", *plan_args(tmp_path)]) == 0
    one, _ = printed_plan(capsys, tmp_path, "--gpus", "1")
    four, out4 = printed_plan(capsys, tmp_path, "--gpus", "4")
    throttled, _ = printed_plan(capsys, tmp_path, "--gpus", "4", "executor.slurm.array_parallelism=2")
    gpu_h = float(one["resource h"].removesuffix(" GPU h"))
    units = int(one["pending"])
    assert units == 11 and gpu_h > 50  # 3,504 records at 0.01/s on one GPU each
    unit_h = gpu_h / units  # the units are of equal size
    rounding = 0.1  # the printed GPU hours and wall hours are each rounded to 0.1
    assert float(one["wall h (1 GPUs)"]) == pytest.approx(gpu_h, abs=rounding)  # one task at a time
    assert (one["at once"], four["at once"], throttled["at once"]) == ("1", "4", "2")
    assert float(four["wall h (4 GPUs)"]) == pytest.approx(math.ceil(units / 4) * unit_h, abs=rounding)
    assert float(throttled["wall h (4 GPUs)"]) == pytest.approx(math.ceil(units / 2) * unit_h, abs=rounding)
    total4 = re.search(r"wall clock with 4 GPUs: ([\d.,]+) h", out4)
    assert total4 and float(total4.group(1)) == float(four["wall h (4 GPUs)"])
    assert "wall clock" not in printed_plan(capsys, tmp_path)[1]  # only when asked for
    assert cli.main(["plan", *plan_args(tmp_path), "--gpus", "0"]) == 2


@pytest.mark.slow
def test_the_plan_counts_what_the_raw_dedup_kept(tmp_path, capsys):
    a = (*plan_args(tmp_path), "dedup.raw=true", "merge.auto=false")
    assert cli.main(["shard", *a]) == 0
    capsys.readouterr()
    assert cli.main(["plan", *a]) == 0
    before = capsys.readouterr().out
    assert "raw dedup (dedup.raw): not run yet: 3,504 records are before it; the stages will see fewer" in (
        before
    )
    assert cli.main(["run", *a]) == 0  # the raw dedup, then the stage
    kept = sum(1 for p in sorted((tmp_path / "dedup_raw").glob("*/part-*.jsonl.zst")) for _ in read_shard(p))
    assert 0 < kept < 3504
    capsys.readouterr()
    assert cli.main(["plan", *a]) == 0
    after = capsys.readouterr().out
    line = f"raw dedup (dedup.raw): 3,504 records -> {kept:,} kept (its markers): the stages see these"
    assert line in after
    row = next(line for line in after.splitlines() if line.startswith("│ upper"))
    assert f"│ {kept:,} " in row  # the stage's records in


def test_a_corpus_of_unknown_size_is_counted_as_unknown_not_0(tmp_path, capsys):
    row, out = printed_plan(capsys, tmp_path, "corpora.2.expected_records=1000")
    # wudao and wanjuan: not sharded, no expected_records; skypile: 1,000 records in shards of 400
    assert "corpus wudao: ? records (unknown: not sharded, no expected_records), ? shards" in out
    assert (row["units"], row["pending"], row["arrays = sbatch calls"], row["records in"]) == (
        f"{math.ceil(1000 / 400)} + ?",
        f"{math.ceil(1000 / 400)} + ?",
        "1 + ?",
        "1,000 + ?",
    )
    assert "total sbatch calls: 1 + ?" in out
    row, out = printed_plan(capsys, tmp_path)  # nothing known
    assert (row["units"], row["pending"], row["arrays = sbatch calls"], row["records in"]) == ("?",) * 4
    assert "total sbatch calls: ?" in out and row["task h"] == "?"


@pytest.mark.slow
def test_a_stage_with_nothing_pending_takes_no_wall_clock(tmp_path, capsys):
    assert cli.main(["run", *plan_args(tmp_path), "merge.auto=false"]) == 0
    row, out = printed_plan(capsys, tmp_path, "--gpus", "1")
    assert (row["pending"], row["wall h (1 GPUs)"]) == ("0", "0.0")
    assert "wall clock with 1 GPUs: 0.0 h (0.0 days)" in out
