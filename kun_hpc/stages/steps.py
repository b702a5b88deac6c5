"""Steps that need arrays of units between barriers: shard, reshard, the filter's calibration.

A step is a generator: it plans, yields each :class:`Array` of units it needs run, receives their outcomes
(one per unit, in order: ``ok``, ``result``, ``error``, ``log``), goes on, and returns its result. It never
sees an executor: the run maps each array on the one it has (:func:`kun_hpc.run.drive`), so the same step
runs inline, locally or as Slurm arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Array:
    """``fn`` over ``units`` (picklable), run as one array named ``name``, logs under ``<run>/logs/<log>``."""

    fn: Callable[[Any], Any]
    units: Sequence[Any]
    name: str
    log: str


Step = Generator[Array, list[Any], Any]
