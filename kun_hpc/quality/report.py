"""The quality sections of the merge report and the dataset card, in the order they are shown."""

from __future__ import annotations

from collections.abc import Callable

from kun_hpc.quality import cost, decontamination, diversity, faithfulness, judge, review
from kun_hpc.quality.section import QualityContext, Section

BUILDERS: list[Callable[[QualityContext], Section | None]] = [
    judge.section,
    faithfulness.section,
    faithfulness.tone_section,
    diversity.section,
    decontamination.section,
    review.section,
    cost.section,
]


def sections(ctx: QualityContext) -> list[Section]:
    """Every measure that has something to say about this run (none when ``merge.quality.enabled`` is
    false)."""
    if not ctx.cfg.merge.quality.enabled:
        return []
    return [s for s in (b(ctx) for b in BUILDERS) if s is not None]
