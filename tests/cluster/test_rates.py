"""Records done, rate and ETA per stage (issue 16, item 9), read from the chunk commits of a real unit that
was interrupted after k chunks, and shown by ``kun-hpc status``."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from kun_hpc import cli, config
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.cluster.rates import stage_progress
from kun_hpc.io.shards import list_shards, read_shard
from kun_hpc.stages.runner import run_unit
from tests.conftest import sample_overrides
from tests.stages_for_tests import Upper

CHUNK = 64
SLEEP_S = 0.1  # per chunk: k chunks take at least k * SLEEP_S


class CrashAfter(Upper):
    """Upper, preempted while processing chunk ``k`` (after k chunks committed)."""

    k = 3

    def process(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > self.k:
            raise RuntimeError("preempted")
        return super().process(batch)


def args(run: Path) -> list[str]:
    return sample_overrides(
        run,
        "executor.kind=inline",
        "shard.records_per_shard=400",
        f"pipeline.chunk_records={CHUNK}",
        "pipeline.stages=[tests.stages_for_tests:Upper,tests.stages_for_tests:Tag]",
        "merge.auto=false",
    )


@pytest.mark.slow
def test_records_done_rate_and_eta_come_from_the_chunks_of_an_interrupted_unit(tmp_path, capsys):
    a = args(tmp_path)
    assert cli.main(["shard", *a]) == 0
    cfg = config.load(None, a)
    grid = plan_grid(cfg)
    unit = grid.units["upper"][0]
    # counted here from the shards themselves, not from the manifests the module reads
    total = sum(1 for p in list_shards(tmp_path / "shards") for _ in read_shard(p))
    assert sum(1 for _ in read_shard(unit.shards[0].input)) > (CrashAfter.k + 1) * CHUNK
    before = time.time()
    with pytest.raises(RuntimeError, match="preempted"):
        run_unit(unit, CrashAfter(cfg, {"sleep_s": SLEEP_S}))
    after = time.time()

    progress = stage_progress(grid, now=after, window_s=3600)
    upper, tag = progress["upper"], progress["tag"]
    done = CrashAfter.k * CHUNK
    assert (upper.done, upper.total, upper.estimated, upper.units_done) == (done, total, 0, 0)
    # the rate: the k chunks' records over the seconds since the attempt started (between `before` and
    # the first chunk's processing)
    assert done / (after - before) <= upper.rate <= done / (CrashAfter.k * SLEEP_S)
    assert upper.eta_s == pytest.approx((total - done) / upper.rate)
    # Tag has not started: its input is estimated from Upper's keep so far (Upper keeps every record)
    assert (tag.done, tag.rate, tag.eta_s, tag.estimated) == (0, None, None, len(grid.units["tag"]))
    assert tag.total == pytest.approx(total)

    capsys.readouterr()
    assert cli.main(["status", *a]) == 0
    table = capsys.readouterr().out.split("kun-hpc funnel")[0]  # the status table
    rows = {line.split()[1]: line for line in table.splitlines() if line.startswith("│ ")}
    assert f"{done:,}/{total:,}" in rows["upper"] and f"0/~{total:,}" in rows["tag"]
    # nothing runs nor is queued (the unit was interrupted): no ETA, the rate it ran at stays
    assert re.search(r"[\d.]+/s │ - \(not running\) │$", rows["upper"]), rows["upper"]
    assert rows["tag"].rstrip(" │").endswith("? │ - (not running)"), rows["tag"]
    assert cli.main(["status", "--watch", *a]) == 1  # nothing queued: one round, not every unit done
    bars = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("upper ", "tag "))]
    # nothing runs (the unit crashed): neither stage has an ETA
    assert f"records {done:,}/{total:,}, " in bars[0] and bars[0].split(" not submitted")[0].endswith(
        "ETA - (not running)"
    )
    assert f"records 0/~{total:,}, ?, ETA - (not running)" in bars[1]

    # the resumed unit starts after the committed chunks and finishes; its records count once
    marker = run_unit(unit)
    assert marker["shards"][0]["resumed_at_chunk"] == CrashAfter.k
    assert marker["shards"][0]["resumed_records"] == done
    upper = stage_progress(grid, window_s=3600)["upper"]
    assert (upper.units_done, upper.done) == (1, marker["in"])
    assert upper.rate > 0

    # a finished stage keeps the rate it ran at (records run over its first start to its last end), an hour
    # later too, instead of one that decays as the window moves past its end
    markers = [marker] + [run_unit(u) for u in grid.units["upper"][1:]]
    ran = sum(m["in"] for m in markers) - done
    seconds = max(m["timings"]["end"] for m in markers) - min(m["timings"]["start"] for m in markers)
    for now in (time.time(), time.time() + 3600):
        assert stage_progress(grid, now=now)["upper"].rate == pytest.approx(ran / seconds)


def test_an_empty_grid_has_no_records_and_no_eta(tmp_path):
    grid = plan_grid(config.load(None, args(tmp_path)))  # not sharded: no units
    progress = stage_progress(grid)
    assert [(p.stage, p.total, p.done, p.rate) for p in progress.values()] == [
        ("upper", 0, 0, None),
        ("tag", 0, 0, None),
    ]
