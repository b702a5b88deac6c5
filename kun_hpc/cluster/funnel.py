"""The funnel: records in, out, rejected and quarantined (by reason) per step, from the done markers.

Status prints it, the plan reads it for measured keep rates, and the merge report renders it; each row also
carries the step's summed ``stats`` (:meth:`~kun_hpc.stages.base.Stage.chunk_stats`).
"""

from __future__ import annotations

from pathlib import Path

import orjson
from omegaconf import DictConfig
from rich.table import Table

from kun_hpc.cluster.grid import plan_grid
from kun_hpc.core.console import console as make_console
from kun_hpc.core.counts import Counts
from kun_hpc.io.markers import valid_marker


def yield_line(cfg: DictConfig) -> str:
    """The run's final pairs per GPU-hour and per task-hour, as its merge report computed them
    (``<merge.output>/report/report.json``, ``quality.cost.summary``: kun_hpc/quality/cost.py); says so when
    the run was not merged yet or its report holds no such figures."""
    path = Path(cfg.merge.output) / "report" / "report.json"
    if not path.is_file():
        return "yield: not merged yet (kun-hpc merge RUN_DIR)"
    try:
        cost = orjson.loads(path.read_bytes()).get("quality", {}).get("cost")
    except orjson.JSONDecodeError as e:
        return f"yield: {path} is not valid JSON ({e}): merge again"
    if not cost:
        return f"yield: {path} holds no cost figures (merge.quality.enabled=false, or an older merge)"
    return f"yield: {cost['summary']}"


def corpus_of(shard_path: str | Path) -> str:
    """Shards live at ``<root>/<corpus>/part-XXXXX.jsonl.zst``."""
    return Path(shard_path).parent.name


def funnel_row(step: str, markers: list[dict], total_units: int) -> dict:
    """Records in, out, rejected and quarantined (by reason), in total and by corpus, and the stage's
    ``stats`` (:meth:`~kun_hpc.stages.base.Stage.chunk_stats`, summed), over a step's done markers (stage
    units and dedup apply units have the same counts and per-shard ``shards`` entries)."""
    total = sum((Counts.from_dict(m) for m in markers), Counts(stats={}))
    corpora: dict[str, Counts] = {}
    for m in markers:
        for s in m.get("shards", []):
            shard = Counts.from_dict(s)  # by corpus, what was not kept is one column: rejected or quarantined
            gone = Counts(shard.in_, shard.out, shard.rejected + shard.quarantined)
            corpus = corpus_of(s["input"])
            corpora[corpus] = corpora.get(corpus, Counts()) + gone
    return {
        "step": step,
        "units_done": len(markers),
        "units": total_units,
        "in": total.in_,
        "out": total.out,
        "rejected": dict(total.rejected),
        "quarantined": dict(total.quarantined),
        "by_corpus": {
            k: {"in": c.in_, "out": c.out, "rejected": dict(c.rejected)} for k, c in sorted(corpora.items())
        },
        "stats": total.stats,
    }


def stage_markers(cfg: DictConfig) -> list[tuple[str, list[dict], int]]:
    """Per grid stage, in order: (stage, the markers of its done units (valid: written under the unit's
    config hash), its number of units)."""
    grid = plan_grid(cfg)
    out = []
    for stage in grid.stages:
        markers = [
            m for u in grid.units[stage] if (m := valid_marker(u.run_dir, stage, u.name, u.config_hash))
        ]
        out.append((stage, markers, len(grid.units[stage])))
    return out


def stage_funnel(cfg: DictConfig) -> list[dict]:
    """One :func:`funnel_row` per grid stage, over its done units."""
    return [funnel_row(stage, markers, units) for stage, markers, units in stage_markers(cfg)]


def print_funnel(cfg: DictConfig, console=None, rows: list[dict] | None = None) -> None:
    """Records in, out, rejected and quarantined (by reason) per stage, summed over its done units."""
    table = Table(title="kun-hpc funnel (done units)")
    for col in ("stage", "units done", "in", "out", "rejected", "quarantined", "by reason"):
        table.add_column(col, justify="left" if col in ("stage", "by reason") else "right")
    for r in stage_funnel(cfg) if rows is None else rows:
        reasons, bad = r["rejected"], r["quarantined"]
        table.add_row(
            r["step"],
            f"{r['units_done']}/{r['units']}",
            f"{r['in']:,}",
            f"{r['out']:,}",
            f"{sum(reasons.values()):,}",
            f"{sum(bad.values()):,}",
            ", ".join(f"{k}={v}" for k, v in sorted({**reasons, **bad}.items())) or "-",
        )
    (console or make_console()).print(table)
