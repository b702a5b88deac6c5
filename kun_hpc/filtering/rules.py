"""Cheap unit rules: each a named rule whose name is the reason code it rejects with.

A rule looks at one unit record (``text`` and ``tokens`` are set) and returns ``None`` to keep it or a short
detail string to reject it. Rules run in the order given, cheapest first; a unit is rejected by the first
rule that fails, so the perplexity scorer only ever sees units every rule kept. Segmentation's own rejection
(``too_long``) and the document-level ``damaged_text`` and ``empty`` come before all of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# CJK Unified Ideographs, Extension A, Compatibility Ideographs, and the supplementary ideographic planes
_NOT_HAN = re.compile("[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+")


class Rule:
    name = "rule"

    def check(self, unit: dict) -> str | None:
        raise NotImplementedError

    def info(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class TooShort(Rule):
    """Fewer than ``min_tokens`` tokens: too little text to carry an answer."""

    min_tokens: int
    name = "too_short"

    def check(self, unit: dict) -> str | None:
        n = unit["tokens"]
        return f"{n} tokens < {self.min_tokens}" if n < self.min_tokens else None


@dataclass
class LowCJK(Rule):
    """Han characters make up less than ``min_ratio`` of the non-space characters (code, tables, English)."""

    min_ratio: float
    name = "low_cjk"

    def check(self, unit: dict) -> str | None:
        text = unit["text"]
        chars = len(text) - text.count(" ") - text.count("\n")
        ratio = len(_NOT_HAN.sub("", text)) / chars if chars else 0.0
        return f"han ratio {ratio:.3f} < {self.min_ratio}" if ratio < self.min_ratio else None


@dataclass
class DupLines(Rule):
    """Characters in repeated lines exceed ``max_frac`` of the unit (Gopher's duplicate line character
    fraction: menus, boilerplate, spam)."""

    max_frac: float
    name = "dup_lines"

    def check(self, unit: dict) -> str | None:
        text = unit["text"]
        lines = text.split("\n")
        if len(lines) < 2:
            return None
        seen: set[str] = set()
        dup = 0
        for line in lines:
            if line in seen:
                dup += len(line)
            else:
                seen.add(line)
        frac = dup / len(text)
        return f"duplicate line chars {frac:.3f} > {self.max_frac}" if frac > self.max_frac else None


@dataclass
class DupNgrams(Rule):
    """Characters covered by repeated character ``n``-grams exceed ``max_frac`` (Gopher's duplicate n-gram
    fraction, on characters since Chinese has no spaces; a repeat is counted once it recurs, as datatrove
    does, skipping over the repeated n-gram)."""

    n: int
    max_frac: float
    name = "dup_ngrams"

    def check(self, unit: dict) -> str | None:
        text = "".join(unit["text"].split())
        n = self.n
        if len(text) < 2 * n:
            return None
        grams = [text[i : i + n] for i in range(len(text) - n + 1)]
        if len(set(grams)) == len(grams):  # the common case: nothing repeats
            return None
        seen: set[str] = set()
        dup = i = 0
        while i < len(grams):
            g = grams[i]
            if g in seen:
                dup += n
                i += n
            else:
                seen.add(g)
                i += 1
        frac = dup / len(text)
        return f"repeated {n}-gram chars {frac:.3f} > {self.max_frac}" if frac > self.max_frac else None


def build_rules(
    min_tokens: int,
    min_cjk_ratio: float,
    max_dup_line_frac: float,
    dup_ngram_n: int,
    max_dup_ngram_frac: float,
) -> list[Rule]:
    """The cheap rules in their order; a threshold that disables its rule (ratio 0, fraction >= 1) goes."""
    rules: list[Rule] = [TooShort(min_tokens)]
    if min_cjk_ratio > 0:
        rules.append(LowCJK(min_cjk_ratio))
    if max_dup_line_frac < 1:
        rules.append(DupLines(max_dup_line_frac))
    if max_dup_ngram_frac < 1:
        rules.append(DupNgrams(dup_ngram_n, max_dup_ngram_frac))
    return rules


def first_failure(rules: Sequence[Rule], unit: dict) -> tuple[str, str] | None:
    for rule in rules:
        detail = rule.check(unit)
        if detail is not None:
            return rule.name, detail
    return None
