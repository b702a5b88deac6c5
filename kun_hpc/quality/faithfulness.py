"""Answer faithfulness: how a polished answer relates to the unit it polished (issue 14, items 2 and 3).

Kun's Answer stage rewrites a raw text (the record's ``text``, the *unit*) into an answer to the instruction
Label made for it. Two failures cost nothing to see on CPU:

* *drift*: the answer is mostly new content, the model wrote its own answer instead of polishing the text;
* *copy*: the answer is the unit nearly verbatim, nothing was polished.

Per pair, on both texts with all whitespace removed (polishing re-flows lines and spaces; a change of
whitespace is no change of content):

* ``lcs_recall`` = LCS(unit, answer) / len(unit): the share of the unit's characters the answer keeps, in
  order; ``lcs_precision`` = LCS / len(answer): the share of the answer's characters that come from the unit,
  in order. LCS is the longest common subsequence of characters (rapidfuzz's bit-parallel ``LCSseq``,
  O(len(unit) * len(answer) / 64)); the pair is character-level ROUGE-L recall and precision (Lin, 2004,
  "ROUGE: A Package for Automatic Evaluation of Summaries"). An empty text shares nothing: both are 0.0 when
  either side is empty.
* ``novel_share``: the share of the answer's distinct character n-grams (n = ``rules.novel_ngram``) that
  occur nowhere in the unit, the abstractiveness measure of summarization (See et al., 2017, "Get To The
  Point", novel n-grams). An answer shorter than n is its own single n-gram (novel unless the unit holds it);
  an empty answer has no n-gram and a novel share of 0.0.
* ``flags``: ``drift`` when novel_share >= ``rules.drift_min_novel``; ``copy`` when lcs_recall >=
  ``rules.copy_min_recall`` and lcs_precision >= ``rules.copy_min_precision``; ``refusal`` when the rules'
  refusal expression (``rules.refusal_patterns``, the ``refusal`` rule's own, :class:`RuleParams`) matches
  the answer as written (whitespace kept: the English patterns need it).

Values are rounded to 4 decimals and the flags are decided on the rounded values, so a reader of a record
can check its flags against its numbers. The rules stage puts the measure on each pair it keeps
(``faithfulness``); the merge reads it, or measures a pair itself when the run ends with Answer
(``kun_hpc/merge/assemble.py``).

:func:`section` and :func:`tone_section` are the report's "Answer faithfulness" and "Tone and refusals".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rapidfuzz.distance import LCSseq

from kun_hpc.quality.section import QualityContext, Section, Table

if TYPE_CHECKING:  # a type only: kun_hpc.stages.rules imports this module
    from kun_hpc.stages.rules import RuleParams

DRIFT, COPY, REFUSAL = "drift", "copy", "refusal"
MEASURES = ("lcs_recall", "lcs_precision", "novel_share")
BINS = [round(i / 20, 2) for i in range(21)]  # width 0.05 on [0, 1]: the assemble markers' histograms
DIGITS = 4
SETTINGS = ("novel_ngram", "drift_min_novel", "copy_min_recall", "copy_min_precision")  # rules.<key>


@dataclass(frozen=True)
class Faithfulness:
    """One pair's measures (fractions in [0, 1], rounded to 4 decimals) and its flags (sorted names)."""

    lcs_recall: float
    lcs_precision: float
    novel_share: float
    flags: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The record's ``faithfulness`` field: the three values and ``flags`` as a list."""
        return {
            "lcs_recall": self.lcs_recall,
            "lcs_precision": self.lcs_precision,
            "novel_share": self.novel_share,
            "flags": list(self.flags),
        }


def comparison_text(text: str) -> str:
    """What is compared: ``text`` without whitespace (Unicode whitespace, the ideographic space included)."""
    return "".join(text.split())


def gram_codes(text: str, n: int) -> np.ndarray:
    """The character n-grams of ``text`` (n <= 3), in order, as uint64 codes: code points (< 2**21) packed 21
    bits each, so equal codes are equal n-grams. Empty when ``text`` is shorter than n."""
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.uint64)
    m = len(points) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64)
    codes = points[:m].copy()
    for i in range(1, n):
        codes <<= np.uint64(21)
        codes |= points[i : i + m]
    return codes


def novel_share(unit: str, answer: str, n: int) -> float:
    """Share of the distinct character n-grams of ``answer`` found nowhere in ``unit`` (both as compared, see
    :func:`comparison_text`); unrounded. 0.0 for an empty answer; an answer shorter than n is one n-gram.
    n <= 3 (the default 3) runs on packed codes (:func:`gram_codes`), sorted and searched in numpy: about
    three times faster than sets of strings (np.unique and np.isin are slower still on arrays this small)."""
    if not answer:
        return 0.0
    if len(answer) < n:
        return 0.0 if answer in unit else 1.0
    if n <= 3:
        grams, known = np.sort(gram_codes(answer, n)), np.sort(gram_codes(unit, n))
        grams = grams[np.concatenate(([True], grams[1:] != grams[:-1]))]
        if not len(known):
            return 1.0
        found = known[np.minimum(np.searchsorted(known, grams), len(known) - 1)] == grams
        return 1.0 - int(np.count_nonzero(found)) / len(grams)
    grams = {answer[i : i + n] for i in range(len(answer) - n + 1)}
    known = {unit[i : i + n] for i in range(len(unit) - n + 1)}
    return len(grams - known) / len(grams)


def measure(unit: str, answer: str, p: RuleParams) -> Faithfulness:
    """The faithfulness of ``answer`` to ``unit`` under the rules settings ``p`` (``novel_ngram``, the drift
    and copy thresholds, the refusal expression); see the module docstring for the definitions."""
    u, a = comparison_text(unit), comparison_text(answer)
    lcs = LCSseq.similarity(u, a)
    recall = round(lcs / len(u), DIGITS) if u else 0.0
    precision = round(lcs / len(a), DIGITS) if a else 0.0
    novel = round(novel_share(u, a, p.novel_ngram), DIGITS)
    flags = []
    if recall >= p.copy_min_recall and precision >= p.copy_min_precision:
        flags.append(COPY)
    if novel >= p.drift_min_novel:
        flags.append(DRIFT)
    if p.refusal is not None and p.refusal.search(answer):
        flags.append(REFUSAL)
    return Faithfulness(recall, precision, novel, tuple(flags))


def of_record(rec: dict, p: RuleParams | None) -> dict | None:
    """A pair's ``faithfulness`` field: the one the rules stage put on it, else measured on its ``text`` and
    ``answer`` with ``p`` (a run that ends with Answer), else None (no string ``text`` or ``answer``, or no
    ``p``)."""
    if isinstance(rec.get("faithfulness"), dict):
        return rec["faithfulness"]
    unit, answer = rec.get("text"), rec.get("answer")
    if p is None or not isinstance(unit, str) or not isinstance(answer, str):
        return None
    return measure(unit, answer, p).as_dict()


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
