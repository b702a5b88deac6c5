"""The report's plots, drawn one way: bars with their counts on them, a log scale where the counts span two
orders of magnitude or more, Chinese labels in an installed CJK font (matplotlib, Agg backend; PNG files in
the report folder)."""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib import pyplot


@functools.cache
def _pyplot() -> pyplot:
    """matplotlib's pyplot on the Agg backend, imported on first use (it costs a second at import; only the
    merge report draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


LOG_SPAN = 100  # largest / smallest non-zero count from which an axis is logarithmic


def wants_log(values: Sequence[float]) -> bool:
    """Whether counts span :data:`LOG_SPAN` or more (largest / smallest non-zero)."""
    nonzero = [v for v in values if v > 0]
    return bool(nonzero) and max(nonzero) / min(nonzero) >= LOG_SPAN


def _with_chinese_labels(draw):
    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with chinese_labels():
            return draw(*args, **kwargs)

    return wrapped


@_with_chinese_labels
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
    fig, ax = _pyplot().subplots(figsize=(8, height))
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
    if n > 1:  # beside the axes: inside, it would hide the counts of the first bars
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title)
    return _save(fig, path)


@_with_chinese_labels
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
    fig, ax = _pyplot().subplots(figsize=(8, 4))
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


@functools.cache
def cjk_fonts() -> tuple[str, ...]:
    """Family names of the installed fonts that hold CJK ideographs (Chinese labels need one): matplotlib's
    font list and the system's fonts (``fc-list``), so a font installed after matplotlib cached its list
    counts too (it is added to matplotlib's list)."""
    from matplotlib import font_manager, ft2font

    known = {f.fname for f in font_manager.fontManager.ttflist}
    names = set()
    for path in sorted(known | set(font_manager.findSystemFonts())):
        try:
            font = ft2font.FT2Font(path)
        except (OSError, RuntimeError):
            continue
        # matplotlib's own Last Resort font maps every character to a placeholder box
        if font.get_char_index(ord("的")) and not font.family_name.startswith("Last Resort"):
            if path not in known:
                font_manager.fontManager.addfont(path)
            names.add(font.family_name)
    return tuple(sorted(names))


@contextmanager
def chinese_labels() -> Iterator[None]:
    """Plots drawn inside use a CJK font as fallback for their labels when one is installed; without one the
    labels show empty boxes, and matplotlib's warning per missing glyph is silenced (the section says so)."""
    fonts = cjk_fonts()
    with (
        _pyplot().rc_context({"font.family": ["DejaVu Sans", *fonts]} if fonts else {}),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        yield


@_with_chinese_labels
def sunburst(path: Path, tree: list[dict], title: str) -> str:
    """Self-Instruct's verb-object sunburst as a nested donut: inner ring the verbs, outer ring each verb's
    nouns, wedges sized by pair counts (a verb's wedge: the pairs of the nouns shown), each labelled with
    its word and count; returns the file name."""
    cmap = _pyplot().get_cmap("tab20")
    inner = [sum(n["count"] for n in v["nouns"]) for v in tree]
    outer = [n for v in tree for n in v["nouns"]]
    colours = [cmap(2 * i % 20 + 2 * i // 20 % 2) for i in range(len(tree))]  # 10 hues dark, then light
    outer_colours = [(*colours[i][:3], 0.55) for i, v in enumerate(tree) for _ in v["nouns"]]
    total = sum(inner) or 1
    fig, ax = _pyplot().subplots(figsize=(9, 9))
    style = {"edgecolor": "white", "linewidth": 0.8}
    ax.pie(
        inner,
        radius=0.6,
        colors=colours,
        labels=[
            f"{v['verb']}\n{c:,}" if c / total >= 0.012 else "" for v, c in zip(tree, inner, strict=True)
        ],
        labeldistance=0.62,
        textprops={"fontsize": 8, "ha": "center", "va": "center"},
        wedgeprops={**style, "width": 0.35},
        startangle=90,
        counterclock=False,
    )
    ax.pie(
        [n["count"] for n in outer],
        radius=1.0,
        colors=outer_colours,
        labels=[f"{n['noun']} {n['count']:,}" if n["count"] / total >= 0.008 else "" for n in outer],
        labeldistance=0.8,
        rotatelabels=True,
        textprops={"fontsize": 7, "ha": "center", "va": "center"},
        wedgeprops={**style, "width": 0.4},
        startangle=90,
        counterclock=False,
    )
    ax.set(aspect="equal")
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return Path(path).name
