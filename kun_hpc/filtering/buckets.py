"""Perplexity thresholds: cc_net's head / middle / tail buckets, from absolute cut-offs or corpus percentiles.

A unit's bucket is ``head`` when ``ppl <= head_max``, ``middle`` when ``ppl <= middle_max``, else ``tail``
(a non-finite perplexity is ``tail``). The buckets listed in ``filter.perplexity.drop`` are rejected with
reason ``ppl_<bucket>``. Cut-offs are either given (``thresholds: absolute``, ``cutoffs: [head_max,
middle_max]``) or the ``percentiles: [p_head, p_tail]`` of the perplexities of a corpus sample
(``thresholds: percentile``), computed once per run by ``kun-hpc filter-calibrate`` (run automatically by
``kun-hpc run`` when missing) and saved in ``<run>/filter/calibration.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

BUCKETS = ("head", "middle", "tail")
THRESHOLDS = ("absolute", "percentile")


@dataclass(frozen=True)
class Cutoffs:
    head_max: float
    middle_max: float

    def bucket(self, ppl: float) -> str:
        if not math.isfinite(ppl) or ppl > self.middle_max:
            return "tail"
        return "head" if ppl <= self.head_max else "middle"

    def to_dict(self) -> dict:
        return {"head_max": self.head_max, "middle_max": self.middle_max}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        raise ValueError("no values to take a percentile of")
    pos = (len(sorted_values) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def percentile_cutoffs(scores: Sequence[float], percentiles: Sequence[float]) -> Cutoffs:
    """Cut-offs at the two percentiles of the finite scores."""
    values = sorted(s for s in scores if math.isfinite(s))
    if not values:
        raise ValueError("calibration sample has no finite perplexity: nothing survived the cheap rules?")
    return Cutoffs(percentile(values, percentiles[0]), percentile(values, percentiles[1]))
