"""Completion markers: ``<run>/done/<step>/<unit>.json``, one a unit of a stage or a global phase.

A unit writes its marker last, atomically, once all its outputs are in place: the marker is the commit point
of the unit. It holds the unit's name, the config hash it ran under, its counts (:mod:`kun_hpc.core.counts`)
or results, and where and when it ran (:func:`runtime_fields`). A marker is *valid* for a unit when it
exists and holds the unit's current config hash (:func:`is_valid`): a re-run skips such units and redoes
every other one.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import orjson

from kun_hpc.core.unit_log import slurm_job
from kun_hpc.io.atomic import atomic_write_bytes


def marker_path(run_dir: str | Path, step: str, unit: str) -> Path:
    """Where the marker of ``unit`` (its name, such as ``filter-00003``) of ``step`` goes."""
    return Path(run_dir) / "done" / step / f"{unit}.json"


def read_marker(run_dir: str | Path, step: str, unit: str) -> dict | None:
    """The marker of ``unit`` of ``step``, or None when it has none (valid or not)."""
    try:
        return orjson.loads(marker_path(run_dir, step, unit).read_bytes())
    except FileNotFoundError:
        return None


def write_marker(run_dir: str | Path, step: str, unit: str, marker: dict) -> None:
    """Commit ``marker`` (atomically; indented JSON)."""
    atomic_write_bytes(marker_path(run_dir, step, unit), orjson.dumps(marker, option=orjson.OPT_INDENT_2))


def is_valid(marker: dict | None, config_hash: str) -> bool:
    """Whether ``marker`` exists and was written under ``config_hash``."""
    return marker is not None and marker.get("config_hash") == config_hash


def valid_marker(run_dir: str | Path, step: str, unit: str, config_hash: str) -> dict | None:
    """The marker of ``unit`` of ``step`` if it is valid under ``config_hash`` (:func:`is_valid`); else
    None."""
    marker = read_marker(run_dir, step, unit)
    return marker if is_valid(marker, config_hash) else None


def runtime_fields(started: float) -> dict:
    """Where and when a unit that started at ``started`` (``time.time()``) ran, for its marker: ``timings``
    (start, end, seconds), ``host``, and the Slurm ``job`` as squeue names it (``132_2`` for an array task:
    :func:`kun_hpc.core.unit_log.slurm_job`) and ``array_task`` (empty off Slurm)."""
    end = time.time()
    return {
        "timings": {"start": started, "end": end, "seconds": round(end - started, 3)},
        "host": socket.gethostname(),
        "job": slurm_job(),
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
    }
