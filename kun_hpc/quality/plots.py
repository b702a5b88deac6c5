"""The report's plots, drawn one way: bars with their counts on them, a log scale where the counts span two
orders of magnitude or more (matplotlib, Agg backend; PNG files in the report folder)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LOG_SPAN = 100  # largest / smallest non-zero count from which an axis is logarithmic


def wants_log(values: Sequence[float]) -> bool:
    """Whether counts span :data:`LOG_SPAN` or more (largest / smallest non-zero)."""
    nonzero = [v for v in values if v > 0]
    return bool(nonzero) and max(nonzero) / min(nonzero) >= LOG_SPAN


def bar_chart(
    path: Path,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    title: str,
    ylabel: str = "records",
    xlabel: str = "",
    horizontal: bool = False,
) -> str:
    """Grouped bars, one group per label and one colour per series (a single series: one bar per label), each
    bar with its count; returns the file name. Axis logarithmic when :func:`wants_log`."""
    n = max(len(series), 1)
    height = max(3.0, 0.3 * len(labels) + 1.5) if horizontal else 4.0
    fig, ax = plt.subplots(figsize=(8, height))
    width = 0.8 / n
    log = wants_log([v for vals in series.values() for v in vals])
    for j, (name, vals) in enumerate(series.items()):
        at = [i + (j - (n - 1) / 2) * width for i in range(len(labels))]
        draw = ax.barh if horizontal else ax.bar
        bars = draw(at, list(vals), width, label=name if n > 1 else None)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in vals], fontsize=7, padding=1)
    if horizontal:
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel + (" (log scale)" if log else ""))
        if log:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
        ax.set_xlabel(xlabel)
        if log:
            ax.set_yscale("log")
    if n > 1:
        ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def histogram(
    path: Path,
    edges: Sequence[float],
    counts: Sequence[float],
    title: str,
    xlabel: str,
    ylabel: str = "records",
    mark: float | None = None,
    mark_label: str = "",
) -> str:
    """A histogram from its bin ``edges`` (len(counts) + 1) and counts, each bar with its count, and an
    optional vertical line at ``mark`` (a threshold); returns the file name."""
    fig, ax = plt.subplots(figsize=(8, 4))
    widths = [b - a for a, b in itertools.pairwise(edges)]
    bars = ax.bar(list(edges[:-1]), list(counts), widths, align="edge", edgecolor="white")
    ax.bar_label(bars, labels=[f"{c:,.0f}" if c else "" for c in counts], fontsize=7, padding=1)
    log = wants_log(counts)
    if log:
        ax.set_yscale("log")
    if mark is not None:
        ax.axvline(mark, color="crimson", linestyle="--", label=mark_label or f"{mark}")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path).name
