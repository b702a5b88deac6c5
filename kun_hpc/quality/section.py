"""What a quality measure hands to the merge report and the dataset card: a :class:`Section`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig


@dataclass
class Table:
    """A table of the report: a header and rows of already formatted cells."""

    header: list[str]
    rows: list[list[str]]
    title: str = ""


@dataclass
class Section:
    """One measure's part of the report.

    ``key``: its entry under ``quality`` in report.json, where ``data`` (JSON values) goes; ``title``: its
    heading; ``lines``: short Markdown paragraphs; ``tables``; ``plots``: PNG file names the builder wrote
    into the report folder (:attr:`QualityContext.folder`); ``card``: the lines of the dataset card's quality
    summary (Markdown, no local paths).
    """

    key: str
    title: str
    data: dict
    lines: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    card: list[str] = field(default_factory=list)


@dataclass
class QualityContext:
    """What a measure may read: the run's config, the merge's outputs and the report folder.

    ``kind``: ``pairs`` or ``text``; ``assemble``: the merge-assemble markers (one per dataset unit, with
    ``shards``: input, output, rows); ``dedup``: (key, apply markers) per final dedup pass; ``funnel``: the
    report's funnel rows (step, in, out, rejected, quarantined, by_corpus).
    """

    cfg: DictConfig
    folder: Path
    dataset: Path
    kind: str
    assemble: list[dict]
    dedup: list[tuple[str, list[dict]]]
    funnel: list[dict]

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)
