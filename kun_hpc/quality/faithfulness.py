"""The report's "Answer faithfulness" and "Tone and refusals" sections (issue 14, items 2 and 3).

The measures themselves (``lcs_recall``, ``lcs_precision``, ``novel_share`` and the ``drift`` / ``copy`` /
``refusal`` flags of a pair) are defined in :mod:`kun_hpc.filtering.faithfulness`. The rules stage puts them
on each pair it keeps; the merge sums them into histograms over :data:`~kun_hpc.filtering.faithfulness.BINS`
in its assemble markers, which :func:`section` draws; :func:`tone_section` reads the refusals the rules stage
dropped (its funnel row) and those still in the dataset.
"""

from __future__ import annotations

from collections import Counter

from kun_hpc.filtering.faithfulness import BINS, COPY, DRIFT, MEASURES, REFUSAL
from kun_hpc.quality.section import QualityContext, Section, Table

SETTINGS = ("novel_ngram", "drift_min_novel", "copy_min_recall", "copy_min_precision")  # rules.<key>


# ----------------------------------------------------------------------------------------------- report
def _dataset_sums(ctx: QualityContext) -> tuple[dict[str, list[int]], Counter[str], Counter[str], int]:
    """Over the assemble markers: the measures' histograms (:data:`BINS`), flag counts, matched refusal
    phrases and dataset rows."""
    hist = {k: [0] * (len(BINS) - 1) for k in MEASURES}
    flags: Counter[str] = Counter()
    phrases: Counter[str] = Counter()
    for m in ctx.assemble:
        for k in MEASURES:
            counts = m.get("histograms", {}).get(k)
            if counts:
                hist[k] = [a + b for a, b in zip(hist[k], counts, strict=True)]
        flags.update(m.get("flags", {}))
        phrases.update(m.get("refusal_phrases", {}))
    return hist, flags, phrases, sum(m["rows"] for m in ctx.assemble)


def _rules_row(ctx: QualityContext) -> dict:
    return next((r for r in ctx.funnel if r["step"] == "rules"), {})


def _rules_stats(ctx: QualityContext) -> dict:
    """The rules stage's ``stats`` (:meth:`kun_hpc.stages.rules.Rules.chunk_stats`) over its done units,
    as its funnel row sums them."""
    return _rules_row(ctx).get("stats", {})


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def _median_bin(counts: list[int]) -> str:
    """The bin holding the median of a histogram over :data:`BINS`, as ``[lo, hi)``; ``n/a`` when empty."""
    if not sum(counts):
        return "n/a"
    half, seen = sum(counts) / 2, 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= half:
            return f"[{BINS[i]:.2f}, {BINS[i + 1]:.2f}{']' if i == len(counts) - 1 else ')'}"
    return "-"


def _examples(phrases: Counter[str] | dict, k: int = 5) -> str:
    return ", ".join(f"`{p}` ({n:,})" for p, n in Counter(phrases).most_common(k)) or "none"


def section(ctx: QualityContext) -> Section | None:
    """The "Answer faithfulness" section: histograms of lcs_recall, lcs_precision and novel_share over the
    dataset (from the assemble markers) with the copy / drift thresholds drawn, the share of dataset pairs
    flagged drift, copy and refusal, and the pairs the rules stage dropped as answer_drift, answer_copy and
    answer_refusal (its funnel row). None for a text dataset."""
    from kun_hpc.quality import plots  # matplotlib: imported by the report only, never by the rules stage

    if ctx.kind != "pairs":
        return None
    r = ctx.cfg.rules
    hist, flags, _, rows = _dataset_sums(ctx)
    measured = sum(hist["lcs_recall"])
    dropped = {k: _rules_row(ctx).get("rejected", {}).get(f"answer_{k}", 0) for k in (DRIFT, COPY, REFUSAL)}
    marks = {
        "lcs_recall": (r.copy_min_recall, "copy: recall >="),
        "lcs_precision": (r.copy_min_precision, "copy: precision >="),
        "novel_share": (r.drift_min_novel, "drift: novel share >="),
    }
    pictures = []
    if measured:
        ctx.folder.mkdir(parents=True, exist_ok=True)
        for k in MEASURES:
            mark, label = marks[k]
            title = f"{k} of the dataset's answers ({measured:,} pairs)"
            path = ctx.folder / f"faithfulness_{k}.png"
            pictures.append(plots.histogram(path, BINS, hist[k], title, k, "pairs", mark, f"{label} {mark}"))
    table = Table(
        ["flag", "pairs in the dataset", "share of measured", "dropped by the rules stage"],
        [[f, f"{flags[f]:,}", _pct(flags[f], measured), f"{dropped[f]:,}"] for f in (DRIFT, COPY, REFUSAL)],
        "flagged and dropped pairs",
    )
    settings = (
        f"n-grams of {r.novel_ngram} characters; drift: novel_share >= {r.drift_min_novel}; "
        f"copy: lcs_recall >= {r.copy_min_recall} and lcs_precision >= {r.copy_min_precision}"
    )
    lines = [
        f"{measured:,} of {rows:,} dataset pairs measured against the unit they polished ({settings}). "
        "lcs_recall: share of the unit's characters the answer keeps in order; lcs_precision: share of the "
        "answer's characters taken from the unit in order; novel_share: share of the answer's character "
        "n-grams found nowhere in the unit (whitespace removed on both sides).",
        f"Median bins: lcs_recall {_median_bin(hist['lcs_recall'])}, lcs_precision "
        f"{_median_bin(hist['lcs_precision'])}, novel_share {_median_bin(hist['novel_share'])}.",
    ]
    card = [
        f"Answer faithfulness ({measured:,} pairs measured): drift {flags[DRIFT]:,} "
        f"({_pct(flags[DRIFT], measured)}), copy {flags[COPY]:,} ({_pct(flags[COPY], measured)}), refusal "
        f"{flags[REFUSAL]:,} ({_pct(flags[REFUSAL], measured)}); median novel share "
        f"{_median_bin(hist['novel_share'])}.",
    ]
    if any(dropped.values()):
        card.append(
            f"The rules stage dropped {dropped[DRIFT]:,} drifting, {dropped[COPY]:,} copied and "
            f"{dropped[REFUSAL]:,} refusing answers."
        )
    data = {
        "pairs": rows,
        "measured": measured,
        "bins": BINS,
        "histograms": hist,
        "flags": {f: flags[f] for f in (DRIFT, COPY, REFUSAL)},
        "dropped": {f"answer_{k}": v for k, v in dropped.items()},
        "settings": {k: r[k] for k in SETTINGS},
    }
    return Section("faithfulness", "Answer faithfulness", data, lines, [table], pictures, card)


def tone_section(ctx: QualityContext) -> Section | None:
    """The "Tone and refusals" section: refusals and assistant boilerplate the rules stage dropped
    (``answer_refusal``, and the reference's ``answer_keyword`` drops) with their most common matched phrases
    or keywords, and the refusals still in the dataset (the ``refusal`` flag) with theirs. None for a text
    dataset."""
    if ctx.kind != "pairs":
        return None
    _, flags, kept_phrases, rows = _dataset_sums(ctx)
    rejected = _rules_row(ctx).get("rejected", {})
    stats = _rules_stats(ctx)
    refusal, keyword = rejected.get("answer_refusal", 0), rejected.get("answer_keyword", 0)
    rules_ran = bool(_rules_row(ctx))
    dropped_phrases, dropped_words = stats.get("refusal_phrases", {}), stats.get("answer_keywords", {})
    table = Table(
        ["where", "pairs", "most common matches"],
        [
            ["dropped: answer_refusal", f"{refusal:,}", _examples(dropped_phrases)],
            ["dropped: answer_keyword (reference)", f"{keyword:,}", _examples(dropped_words)],
            ["in the dataset: refusal flag", f"{flags[REFUSAL]:,}", _examples(kept_phrases)],
        ],
        "refusals and assistant boilerplate",
    )
    patterns = len(ctx.cfg.rules.refusal_patterns)
    no_rules = "" if rules_ran else " This run has no rules stage: nothing was dropped."
    lines = [
        f"A refusal is an answer matching one of the {patterns} `rules.refusal_patterns` "
        "(作为一个AI…, 我无法…, 抱歉，我…, As an AI…, I'm sorry…; case-insensitive). The rules stage drops "
        "it when `refusal` is in `rules.answer_rules`; Kun's reference keyword rule (`answer_keywords`) "
        "drops more bluntly, any answer holding one of the words." + no_rules,
        f"{flags[REFUSAL]:,} of {rows:,} dataset pairs ({_pct(flags[REFUSAL], rows)}) still match a refusal "
        "pattern.",
    ]
    card = [
        f"Refusals: {refusal:,} answers dropped as refusals (answer_refusal), {keyword:,} by the reference's "
        f"keywords (answer_keyword); {flags[REFUSAL]:,} of the dataset's pairs still match a refusal pattern."
    ]
    data = {
        "dropped": {"answer_refusal": refusal, "answer_keyword": keyword},
        "dropped_matches": {"refusal_phrases": dropped_phrases, "answer_keywords": dropped_words},
        "in_dataset": flags[REFUSAL],
        "in_dataset_matches": dict(kept_phrases),
    }
    return Section("tone", "Tone and refusals", data, lines, [table], [], card)
