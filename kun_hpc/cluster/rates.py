"""Records done, rate and ETA per stage, from the run's files only (no scheduler): what ``kun-hpc status``,
``status --watch`` / ``run --wait`` and the local progress bars show (issue 16).

* **records total** of a stage: the input lines of its units' shards. Exact where the input is known: a
  unit's own valid marker (``in``), its upstream unit's valid marker (the lines it wrote), a shard manifest
  (``<shard.output>/<corpus>/manifest.json``) or the raw dedup's apply markers. A unit whose input is not
  written yet counts its upstream unit's records times the upstream stage's keep (lines out per record in,
  measured on what that stage did so far, else ``pipeline.expected_keep.<stage>``, else 1); before the raw
  dedup ran, the first stage counts the shards before dedup. Such totals are estimates (shown ``~``); a
  unit whose input cannot be counted at all (no manifest) makes the total unknown (``?``).
* **records done**: ``in`` of the units with a valid marker, plus the records of the chunks the others
  committed under their config hash (:func:`kun_hpc.stages.chunks.committed_chunks`).
* **rate** (records/s): records processed in the last ``window_s`` seconds over the seconds of that window
  the stage was at work. A chunk commit counts its records at its commit time; a finished unit's records
  of its last attempt (``in`` less ``resumed_records``) are spread evenly over that attempt (its marker's
  ``timings``); the window starts at ``now - window_s`` or at the earliest start of the attempts that count
  in it, whichever is later. None when nothing counts.
* **ETA** (seconds): records left / rate; 0 when every unit is done; None while the rate or the total is
  unknown, or the rate is 0, or when no unit of an unfinished stage runs or is queued (``running`` False,
  set by :func:`kun_hpc.cluster.status.with_activity` from the units' states: shown ``- (not running)``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.cluster.grid import Grid, plan_grid
from kun_hpc.cluster.phases import phase_markers
from kun_hpc.core.counts import Counts
from kun_hpc.io.layout import RAW_DEDUP_PHASE
from kun_hpc.io.markers import valid_marker
from kun_hpc.io.shards import read_manifest
from kun_hpc.stages.chunks import committed_chunks

WINDOW_S = 600.0  # the rate is measured over the last 10 minutes


@dataclass
class StageProgress:
    """One stage's records: ``total`` input records (float: it may hold estimates), ``done``, ``rate``
    (records/s, None when unknown) and its units; ``estimated`` counts the units whose input is estimated,
    ``unknown`` those whose input could not be counted (not in ``total``)."""

    stage: str
    units: int = 0
    units_done: int = 0
    total: float = 0.0
    estimated: int = 0
    unknown: int = 0
    done: int = 0
    rate: float | None = None
    running: bool | None = None  # a unit of it runs or is queued; None: not known here

    @property
    def stopped(self) -> bool:
        """Unfinished, and no unit of it runs or is queued (an interrupted run, failed units): no ETA."""
        return self.running is False and self.units_done < self.units

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate: 0 when every unit is done, None when the rate is unknown or 0
        or the stage is :attr:`stopped`."""
        if self.units_done == self.units:
            return 0.0
        if not self.rate or self.unknown or self.stopped:
            return None
        return max(self.total - self.done, 0.0) / self.rate

    def records_text(self) -> str:
        """``done/total``; the total ``~``-prefixed when it holds estimates."""
        if self.unknown:
            return f"{self.done:,}/?"
        return f"{self.done:,}/{'~' if self.estimated else ''}{round(self.total):,}"

    def rate_text(self) -> str:
        return "?" if self.rate is None else f"{self.rate:,.1f}/s"

    def eta_text(self) -> str:
        return "- (not running)" if self.stopped else duration(self.eta_s)

    def summary(self) -> str:
        """``records 1,234/5,000, 12.3/s, ETA 6m10s``: one line for bars and watches."""
        return f"records {self.records_text()}, {self.rate_text()}, ETA {self.eta_text()}"


def duration(seconds: float | None) -> str:
    """``?``, ``45s``, ``6m10s``, ``3h05m`` or ``2d04h``."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class _Window:
    """Records processed in ``[now - window_s, now]``, and the earliest start of the attempts they come
    from."""

    def __init__(self, now: float, window_s: float):
        self.now, self.begin = now, now - window_s
        self.records = 0.0
        self.first: float | None = None

    def _started(self, start: float) -> None:
        self.first = start if self.first is None else min(self.first, start)

    def commit(self, chunk: dict) -> None:
        t = chunk.get("timings")  # chunks committed before issue 16 have none
        if t and self.begin < t["end"] <= self.now:
            self.records += chunk["in"]
            self._started(t["start"])

    def finished(self, marker: dict) -> None:
        start, end = marker["timings"]["start"], marker["timings"]["end"]
        n = marker["in"] - sum(s.get("resumed_records", 0) for s in marker.get("shards", []))
        overlap = min(end, self.now) - max(start, self.begin)
        if end > start and overlap > 0:
            self.records += n * overlap / (end - start)
        elif end == start and self.begin < end <= self.now:
            self.records += n
        else:
            return
        self._started(start)

    def rate(self) -> float | None:
        if self.first is None:
            return None
        seconds = self.now - max(self.begin, self.first)
        return self.records / seconds if seconds > 0 else None


def _finished_rate(markers: list[dict]) -> float | None:
    """Records per second of a finished stage: records processed (resumed ones excluded) over the seconds
    from its first unit's start to its last unit's end; None when the markers carry no timings."""
    spans, records = [], 0.0
    for marker in markers:
        t = marker.get("timings")
        if not t:
            return None
        spans.append((t["start"], t["end"]))
        records += marker["in"] - sum(s.get("resumed_records", 0) for s in marker.get("shards", []))
    if not spans:
        return None
    seconds = max(e for _, e in spans) - min(b for b, _ in spans)
    return records / seconds if seconds > 0 else None


def _lines_out(counts: dict) -> int:
    """Lines a stage wrote for these counts (its units out: the next stage's input)."""
    return Counts.from_dict(counts).unit_counts.out


class _Inputs:
    """Exact line counts of the first stage's input shards: their manifests, or the raw dedup's apply
    markers when the first stage reads the deduplicated shards."""

    def __init__(self, run_dir: str):
        self.manifests: dict[Path, dict[str, int]] = {}
        applied = phase_markers(run_dir, f"{RAW_DEDUP_PHASE}.apply")
        self.dedup = {s["output"]: _lines_out(s) for m in applied for s in m.get("shards", [])}

    def manifest(self, path: Path) -> int | None:
        folder = path.parent
        if folder not in self.manifests:
            try:
                self.manifests[folder] = {s["name"]: s["records"] for s in read_manifest(folder)["shards"]}
            except (OSError, ValueError, KeyError):  # not sharded yet (or a manifest being rewritten)
                self.manifests[folder] = {}
        return self.manifests[folder].get(path.name)

    def lines(self, path: str, original: Path | None) -> tuple[int | None, bool]:
        """(lines or None when unknown, exact) of an input shard; ``original``: the shard before the raw
        dedup, if any."""
        if original is None or str(original) == path:
            return self.manifest(Path(path)), True
        if path in self.dedup:
            return self.dedup[path], True
        return self.manifest(original), False  # the raw dedup has not run: the records before it


def stage_progress(
    grid: Grid,
    expected_keep: Mapping[str, float] | None = None,
    now: float | None = None,
    window_s: float = WINDOW_S,
) -> dict[str, StageProgress]:
    """Each stage's :class:`StageProgress` (see the module docstring), in the grid's stage order, read from
    the markers, committed chunks and manifests of the grid's run."""
    run_dir = next((u.run_dir for us in grid.units.values() for u in us), None)
    if run_dir is None:  # not sharded yet: no units
        return {stage: StageProgress(stage) for stage in grid.stages}
    now = time.time() if now is None else now
    expected_keep = expected_keep or {}
    out: dict[str, StageProgress] = {}
    first = grid.stages[0]
    inputs = _Inputs(run_dir)
    originals = list(grid.shards)
    upstream: dict[int, tuple[float | None, dict | None]] = {}  # group -> (records in, valid marker)
    keep = 1.0
    for stage in grid.stages:
        p = StageProgress(stage, units=len(grid.units[stage]))
        window = _Window(now, window_s)
        seen_in = seen_out = 0
        current: dict[int, tuple[float | None, dict | None]] = {}
        markers: list[dict] = []
        for u in grid.units[stage]:
            marker = valid_marker(u.run_dir, stage, u.name, u.config_hash)
            if marker is not None:
                total, exact = float(marker["in"]), True
                p.units_done += 1
                p.done += marker["in"]
                seen_in, seen_out = seen_in + marker["in"], seen_out + _lines_out(marker)
                window.finished(marker)
                markers.append(marker)
            else:
                if stage == first:
                    spt = len(grid.units[stage][0].shards)
                    counted = [
                        inputs.lines(t.input, originals[u.index * spt + k] if originals else None)
                        for k, t in enumerate(u.shards)
                    ]
                    known = None not in (n for n, _ in counted)
                    total = float(sum(n or 0 for n, _ in counted)) if known else None
                    exact = all(e for _, e in counted)
                else:
                    up_in, up_marker = upstream.get(u.index, (None, None))
                    if up_marker is not None:
                        total, exact = float(_lines_out(up_marker)), True
                    else:
                        total, exact = None if up_in is None else up_in * keep, False
                for t in u.shards:
                    for chunk in committed_chunks(t.output, u.config_hash):
                        p.done += chunk["in"]
                        seen_in, seen_out = seen_in + chunk["in"], seen_out + _lines_out(chunk)
                        window.commit(chunk)
            if total is None:
                p.unknown += 1
            else:
                p.total += total
                p.estimated += not exact
            current[u.index] = (total, marker)
        # a finished stage keeps the rate it ran at, not one that decays as the window moves past its end
        p.rate = window.rate() if p.units_done < p.units else _finished_rate(markers)
        out[stage] = p
        keep = seen_out / seen_in if seen_in else float(expected_keep.get(stage, 1.0))
        upstream = current
    return out


def run_progress(cfg: DictConfig, now: float | None = None) -> dict[str, StageProgress]:
    """:func:`stage_progress` of a run's whole grid, estimating with ``pipeline.expected_keep``."""
    return stage_progress(plan_grid(cfg), cfg.pipeline.expected_keep, now)
