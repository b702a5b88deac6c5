"""The quality sections of the merge report and the dataset card, in the order they are shown."""

from __future__ import annotations

from kun_hpc.quality.section import QualityContext, Section


def sections(ctx: QualityContext) -> list[Section]:
    """Every measure that has something to say about this run (``merge.quality.enabled``: all of them)."""
    if not ctx.cfg.merge.quality.enabled:
        return []
    builders: list = []  # filled as the measures land: judge, faithfulness, diversity, decontamination, ...
    return [s for s in (b(ctx) for b in builders) if s is not None]
