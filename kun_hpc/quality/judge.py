"""Judge health (issue 14, item 1): how the Point stage's judge behaved, from what its units wrote.

Point's :meth:`~kun_hpc.stages.point.Point.chunk_stats` leaves ``stats["judge"]`` in every unit marker
(``done/point/<unit>.json``): per corpus, the outcome of every record it read, and in reference mode the
exact histogram of tokens generated per judgement and how many hit ``max_new_tokens``, in calibrated mode
the scores of all scored records (kept and rejected) in 100 bins. :func:`section` sums them over the units
(nothing is re-read from the shards) and reports:

* reference mode: the shares of records judged good / bad / both / unparseable, and of any other reject
  reason (prompt_too_long, empty_output, ...), per corpus and overall, of every record Point read; tokens per
  judgement: mean, p50, p99 (exact: numpy's linear interpolation, over the histogram), max, and the share
  that hit ``max_new_tokens`` -- a rambling judge is the most expensive failure;
* calibrated mode: the score distribution of all scored records with ``point.threshold`` drawn on it, and
  the share at or above the threshold (exact: those are the kept records).

A Humpback reimplementation found 45% of its judge's outputs unparseable only after the fact; this section
shows it on every run.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections import Counter
from collections.abc import Mapping

from kun_hpc.core.counts import add_stats
from kun_hpc.quality import plots
from kun_hpc.quality.section import QualityContext, Section, Table
from kun_hpc.stages.point import BAD, BOTH, GOOD, SCORE_BINS, UNPARSEABLE

STAGE = "point"
TITLE = "Judge health (Point)"
VERDICTS = (GOOD, BAD, BOTH, UNPARSEABLE)
ALL = "all"  # the row over every corpus
TOKEN_PLOT_BARS = 50  # at most this many bars in the tokens-per-judgement plot


# ------------------------------------------------------------------------------------------ numbers
def histogram_percentile(counts: Mapping[int, int], p: float) -> float:
    """The ``p``-th percentile (0-100) of the values a histogram ``{value: count}`` holds, by linear
    interpolation between closest ranks (numpy's default method): equal to
    :func:`kun_hpc.filtering.buckets.percentile` of the expanded sorted list, without expanding it.
    Raises ValueError for an empty histogram."""
    values = sorted(v for v, c in counts.items() if c > 0)
    if not values:
        raise ValueError("no values to take a percentile of")
    ends = list(itertools.accumulate(counts[v] for v in values))  # 1 + the rank of each value's last copy

    def at(rank: int) -> int:
        return values[bisect.bisect_right(ends, rank)]

    pos = (ends[-1] - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, ends[-1] - 1)
    return at(lo) + (at(hi) - at(lo)) * (pos - lo)


def token_summary(tokens: Mapping[str, int], truncated: int) -> dict:
    """Tokens per judgement from Point's exact histogram ``{str(tokens): judgements}`` and its truncated
    count: ``judgements``, ``mean``, ``p50``, ``p99``, ``max`` (tokens), ``truncated`` and
    ``share_truncated`` (of the judgements); the statistics are None when there is no judgement."""
    counts = {int(k): int(v) for k, v in tokens.items() if v}
    n = sum(counts.values())
    out: dict = {"judgements": n, "mean": None, "p50": None, "p99": None, "max": None}
    if n:
        out.update(
            mean=sum(k * v for k, v in counts.items()) / n,
            p50=histogram_percentile(counts, 50),
            p99=histogram_percentile(counts, 99),
            max=max(counts),
        )
    return {**out, "truncated": truncated, "share_truncated": truncated / n if n else None}


def judge_stats(funnel: list[dict]) -> tuple[dict, int, int] | None:
    """The Point stage's ``stats["judge"]`` summed over its done unit markers (``{corpus: {outcomes,
    tokens, truncated, scores}}``, see :meth:`~kun_hpc.stages.point.Point.chunk_stats`), the number of done
    units and of units, from the run's funnel rows (:func:`~kun_hpc.cluster.funnel.funnel_row` sums the
    markers' ``stats``); None when the funnel has no point stage."""
    row = next((r for r in funnel if r["step"] == STAGE), None)
    if row is None:
        return None
    return row.get("stats", {}).get("judge", {}), row["units_done"], row["units"]


# ------------------------------------------------------------------------------------------ section
def section(ctx: QualityContext) -> Section | None:
    """ "Judge health (Point)", key ``judge``: verdict shares and tokens per judgement (reference mode) or the
    score distribution with the threshold (calibrated mode), per corpus and over all; None when the run has
    no point stage. Writes ``judge_tokens.png`` or ``judge_scores.png`` into ``ctx.folder``."""
    found = judge_stats(ctx.funnel)
    if found is None:
        return None
    per, done, units = found
    rows = {c: per[c] for c in sorted(per)}
    rows[ALL] = functools.reduce(add_stats, rows.values(), {})
    outcomes = {name: Counter(s.get("outcomes", {})) for name, s in rows.items()}
    others = sorted({k for o in outcomes.values() for k in o} - set(VERDICTS))
    records = outcomes[ALL].total()
    data: dict = {"mode": str(ctx.cfg.point.mode), "units_done": done, "units": units, "records": records}
    lines = [
        f"Over the {records:,} records the Point stage read ({done} of {units} units done); each is counted "
        "once, under its verdict or its reject reason."
    ]
    if not records:  # no unit done, or only units run before Point recorded its stats
        lines = [f"No judge statistics in the Point markers ({done} of {units} units done)."]
        return Section("judge", TITLE, data, lines)
    if data["mode"] == "calibrated":
        return _calibrated(ctx, rows, outcomes, others, data, lines)
    return _reference(ctx, rows, outcomes, others, data, lines)


def _reference(
    ctx: QualityContext,
    rows: dict[str, dict],
    outcomes: dict[str, Counter],
    others: list[str],
    data: dict,
    lines: list[str],
) -> Section:
    max_new = int(ctx.cfg.point.sampling.max_new_tokens)
    stop = bool(ctx.cfg.point.get("stop_at_verdict", False))
    tokens = {n: token_summary(s.get("tokens", {}), s.get("truncated", 0)) for n, s in rows.items()}
    hist = rows[ALL].get("tokens", {})
    data.update(max_new_tokens=max_new, stop_at_verdict=stop)
    _by_row(data, {n: {"outcomes": dict(outcomes[n]), "tokens": tokens[n]} for n in rows})
    data["tokens_histogram"] = {k: hist[k] for k in sorted(hist, key=int)}
    verdicts = Table(
        ["corpus", "records", *VERDICTS, *others],
        [
            [n, f"{o.total():,}", *(_count(o[k], o.total()) for k in (*VERDICTS, *others))]
            for n, o in outcomes.items()
        ],
        "Verdicts (share of the records read)",
    )
    cost = Table(
        ["corpus", "judgements", "mean", "p50", "p99", "max", f"hit max_new_tokens ({max_new})"],
        [
            [
                n,
                f"{t['judgements']:,}",
                *(_num(t[k]) for k in ("mean", "p50", "p99", "max")),
                _count(t["truncated"], t["judgements"]),
            ]
            for n, t in tokens.items()
        ],
        "Tokens generated per judgement",
    )
    lines.append(
        "`point.stop_at_verdict` is "
        + ("on: a judgement ends at its first tag, so none holds both." if stop else "off (the reference).")
    )
    o, t, records = outcomes[ALL], tokens[ALL], outcomes[ALL].total()
    card = [
        f"Judge (Point, reference): {_share(o[GOOD], records)} good, {_share(o[BAD], records)} bad, "
        f"{_share(o[BOTH], records)} both tags, {_share(o[UNPARSEABLE], records)} unparseable "
        f"of {records:,} instructions."
    ]
    plot = []
    if t["judgements"]:
        card.append(
            f"{_num(t['mean'])} tokens per judgement (p50 {_num(t['p50'])}, p99 {_num(t['p99'])}); "
            f"{_share(t['truncated'], t['judgements'])} hit max_new_tokens ({max_new})"
            + ("; generation stopped at the first verdict tag." if stop else ".")
        )
        plot.append(_token_plot(ctx, data["tokens_histogram"], max_new if t["truncated"] else None))
    return Section("judge", TITLE, data, lines, [verdicts, cost], plot, card)


def _calibrated(
    ctx: QualityContext,
    rows: dict[str, dict],
    outcomes: dict[str, Counter],
    others: list[str],
    data: dict,
    lines: list[str],
) -> Section:
    point = ctx.cfg.point
    threshold = float(point.threshold)
    bins = {n: [int(s.get("scores", {}).get(str(i), 0)) for i in range(SCORE_BINS)] for n, s in rows.items()}
    data.update(threshold=threshold, bin_width=1 / SCORE_BINS)
    scores = {
        n: {"outcomes": dict(o), "scored": sum(bins[n]), "at_or_above": o[GOOD], "score_bins": bins[n]}
        for n, o in outcomes.items()
    }
    _by_row(data, scores)
    table = Table(
        ["corpus", "records", "scored", f"score >= {threshold}", f"score < {threshold}", *others],
        [
            [
                n,
                f"{o.total():,}",
                f"{scores[n]['scored']:,}",
                _count(o[GOOD], scores[n]["scored"]),
                _count(o[BAD], scores[n]["scored"]),
                *(_count(o[k], o.total()) for k in others),
            ]
            for n, o in outcomes.items()
        ],
        "Calibrated scores (shares of the scored records; other reasons: of the records read)",
    )
    lines.append(
        f"score = P({point.good}) / (P({point.good}) + P({point.bad})) of the token after "
        f"`{point.verdict_open}`, for kept and rejected records alike; `point.threshold` = {threshold}."
    )
    scored = scores[ALL]["scored"]
    plot = []
    if scored:
        edges = [i / SCORE_BINS for i in range(SCORE_BINS + 1)]
        title = "Judge scores of all scored records"
        mark = f"threshold {threshold}"
        path = ctx.folder / "judge_scores.png"
        plot.append(plots.histogram(path, edges, bins[ALL], title, "score", mark=threshold, mark_label=mark))
    card = [
        f"Judge (Point, calibrated): {_share(outcomes[ALL][GOOD], scored)} of {scored:,} scored instructions "
        f"at or above the threshold {threshold}."
    ]
    return Section("judge", TITLE, data, lines, [table], plot, card)


def _token_plot(ctx: QualityContext, hist: Mapping[str, int], cap: int | None) -> str:
    """Tokens per judgement in at most :data:`TOKEN_PLOT_BARS` bars of equal integer width, with a line at
    ``cap`` (max_new_tokens) when judgements hit it."""
    counts = {int(k): v for k, v in hist.items()}
    step = max(1, math.ceil((max(counts) + 1) / TOKEN_PLOT_BARS))
    bars = [0] * (max(counts) // step + 1)
    for k, v in counts.items():
        bars[k // step] += v
    edges = [i * step for i in range(len(bars) + 1)]
    return plots.histogram(
        ctx.folder / "judge_tokens.png",
        edges,
        bars,
        "Tokens generated per judgement",
        "tokens",
        ylabel="judgements",
        mark=cap,
        mark_label="max_new_tokens" if cap else "",
    )


def _by_row(data: dict, values: dict[str, dict]) -> None:
    """``data["corpora"]``: the values per corpus; ``data["all"]``: over all of them."""
    data["corpora"] = {n: v for n, v in values.items() if n != ALL}
    data[ALL] = values[ALL]


def _count(n: int, of: int) -> str:
    """``n (share of of)``."""
    return f"{n:,} ({100 * n / of:.1f}%)" if of else f"{n:,}"


def _share(n: int, of: int) -> str:
    return f"{100 * n / of:.1f}%" if of else "-"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}".removesuffix(".0")
