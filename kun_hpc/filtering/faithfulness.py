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
(``faithfulness``, :mod:`kun_hpc.stages.rules`); the merge reads it, or measures a pair itself when the run
ends with Answer (``kun_hpc/merge/assemble.py``), and sums the measures into histograms over :data:`BINS`
that the report draws (:mod:`kun_hpc.quality.faithfulness`). The settings come from :class:`RuleParams`, the
``rules`` config section as plain values, which the rules stage's rules read too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import LCSseq

DRIFT, COPY, REFUSAL = "drift", "copy", "refusal"
MEASURES = ("lcs_recall", "lcs_precision", "novel_share")
BINS = [round(i / 20, 2) for i in range(21)]  # width 0.05 on [0, 1]: the assemble markers' histograms
DIGITS = 4


@dataclass(frozen=True)
class RuleParams:
    """The settings of the rules (the ``rules`` config section, as plain values)."""

    instruction_keywords: tuple[str, ...]
    answer_keywords: tuple[str, ...]
    whitespace_run: int
    min_answer_chars: int
    max_opening_repeats: int
    max_unit_chars: int
    novel_ngram: int  # the faithfulness measure's settings (:func:`measure`)
    drift_min_novel: float
    copy_min_recall: float
    copy_min_precision: float
    refusal: re.Pattern[str] | None = None  # rules.refusal_patterns, one alternation

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> RuleParams:
        return cls(
            tuple(section["instruction_keywords"]),
            tuple(section["answer_keywords"]),
            int(section["whitespace_run"]),
            int(section["min_answer_chars"]),
            int(section["max_opening_repeats"]),
            int(section["max_unit_chars"]),
            int(section["novel_ngram"]),
            float(section["drift_min_novel"]),
            float(section["copy_min_recall"]),
            float(section["copy_min_precision"]),
            refusal_pattern(section.get("refusal_patterns") or ()),
        )


def refusal_pattern(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One case-insensitive regular expression matching any of ``patterns`` (None for none)."""
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


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
