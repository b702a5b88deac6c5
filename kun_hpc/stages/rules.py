"""Kun's post-rules: pure functions over one instruction or answer, and the ``rules`` stage that runs them.

Each rule takes the text and the :class:`RuleParams` and returns the (possibly cleaned) text, or a
:class:`Drop` with a reason code. Rules run in the order the config lists them
(``rules.instruction_rules``, ``rules.answer_rules``); the first drop wins.

What Kun's reference scripts meant (they have bugs: an undefined ``sys``, the answer script overwriting each
instruction with its output, ``len // 128`` losing records when splitting into 128 files):

* after Label: drop instructions containing any of the instruction keywords (新闻 材料 图片 ...), strip
  trailing whitespace;
* after Answer: drop outputs containing any of the answer keywords (作为 根据 知识库 2023 抱歉), outputs under
  20 characters, outputs that open with one unit repeated more than 5 times;
* an instruction with a run of >= 5 whitespace characters is cut there; an instruction of repeated lines
  keeps its longest repeated line when that line is its prefix, else it is dropped.

Both ends are stripped (not only the trailing one): leading whitespace would make a cut at a whitespace run
empty the instruction, and an answer opening with blank lines would count as a repeated opening.

Beyond the reference (issue 14): the answer rules ``drift`` (reason ``answer_drift``) and ``copy``
(``answer_copy``) judge the answer against the unit it polished (the record's ``text``): they are *unit
rules*, called with (answer, unit, params), beside the text rules in :data:`ANSWER_RULES` and in the same
order. Every pair the stage keeps and that has a string ``text`` gets a ``faithfulness`` field, measured on
the final answer (:func:`kun_hpc.filtering.faithfulness.measure`), whether or not those rules are listed. A
pair without a string ``text`` gets no such field, and is dropped as ``missing_field`` only when a unit rule
is listed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kun_hpc.config import ANSWER_RULE_NAMES, INSTRUCTION_RULE_NAMES
from kun_hpc.core.records import Rejected
from kun_hpc.filtering.faithfulness import COPY, DRIFT, RuleParams, measure
from kun_hpc.stages.base import Stage


@dataclass(frozen=True)
class Drop:
    """A rule's verdict that the record goes: a reason code and what triggered it."""

    reason: str
    detail: str = ""


Rule = Callable[[str, RuleParams], "str | Drop"]
UnitRule = Callable[[str, str, RuleParams], "str | Drop"]  # (answer, unit, params)


# ------------------------------------------------------------------------------------------ shared rules
def strip_whitespace(text: str, p: RuleParams) -> str:
    return text.strip()


def _not_empty(field: str) -> Rule:
    def not_empty(text: str, p: RuleParams) -> str | Drop:
        return text if text.strip() else Drop(f"{field}_empty")

    return not_empty


def _keywords(field: str, attr: str) -> Rule:
    def keywords(text: str, p: RuleParams) -> str | Drop:
        for word in getattr(p, attr):
            if word in text:
                return Drop(f"{field}_keyword", word)
        return text

    return keywords


# ------------------------------------------------------------------------------------- instruction rules
def cut_whitespace_run(text: str, p: RuleParams) -> str:
    """Cut the instruction at its first run of ``whitespace_run`` or more whitespace characters."""
    m = re.search(rf"\s{{{p.whitespace_run},}}", text)
    return text[: m.start()] if m else text


def repeated_lines(text: str, p: RuleParams) -> str | Drop:
    """An instruction with a repeated line: its longest repeated line if the instruction starts with that
    line (the model said the same thing again), else dropped (repetition inside a muddle)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    repeated = [ln for ln, n in Counter(lines).items() if n > 1]
    if not repeated:
        return text
    longest = max(repeated, key=len)  # the first of the longest, in order of appearance
    if text.lstrip().startswith(longest):
        return longest
    return Drop("instruction_repeated_lines", longest[:80])


# ------------------------------------------------------------------------------------------ answer rules
def min_chars(text: str, p: RuleParams) -> str | Drop:
    if len(text) < p.min_answer_chars:
        return Drop("answer_too_short", f"{len(text)} < {p.min_answer_chars} characters")
    return text


def repeated_opening(text: str, p: RuleParams) -> str | Drop:
    """Drop an answer that opens with one unit (1..max_unit_chars characters) occurring more than
    ``max_opening_repeats`` times in a row (6+ times by default), such as 哈哈哈哈哈哈 or "1. 1. 1. 1. 1. 1.".
    """
    pattern = rf"(.{{1,{p.max_unit_chars}}}?)\1{{{p.max_opening_repeats},}}"
    m = re.match(pattern, text, re.DOTALL)
    if m:
        return Drop("answer_repeated_opening", f"{m.group(1)!r} x {len(m.group(0)) // len(m.group(1))}")
    return text


def refusal(text: str, p: RuleParams) -> str | Drop:
    """Drop a refusal or assistant boilerplate (作为一个AI…, 我无法…, 抱歉，我…, "As an AI", "I'm sorry"):
    ``rules.refusal_patterns``; the detail is the matched phrase."""
    m = p.refusal.search(text) if p.refusal is not None else None
    return Drop("answer_refusal", m.group(0)) if m else text


def _flagged(flag: str) -> UnitRule:
    def flagged(text: str, unit: str, p: RuleParams) -> str | Drop:
        f = measure(unit, text, p)
        if flag in f.flags:
            detail = f"recall {f.lcs_recall}, precision {f.lcs_precision}, novel {f.novel_share}"
            return Drop(f"answer_{flag}", detail)
        return text

    return flagged


# the rules section's keys the instruction rules read (what Label's config hash covers)
INSTRUCTION_SETTINGS = ("instruction_rules", "instruction_keywords", "whitespace_run")
# the rules section's keys the faithfulness measure reads (what the merge's config hash covers of it)
FAITHFULNESS_SETTINGS = ("novel_ngram", "drift_min_novel", "copy_min_recall", "copy_min_precision",
                         "refusal_patterns")  # fmt: skip
INSTRUCTION_RULES: dict[str, Rule] = {
    "strip_whitespace": strip_whitespace,
    "cut_whitespace_run": cut_whitespace_run,
    "repeated_lines": repeated_lines,
    "not_empty": _not_empty("instruction"),
    "instruction_keywords": _keywords("instruction", "instruction_keywords"),
}
# drift: novel_share >= rules.drift_min_novel; copy: lcs_recall and lcs_precision >= rules.copy_min_*
UNIT_RULES: dict[str, UnitRule] = {DRIFT: _flagged(DRIFT), COPY: _flagged(COPY)}
# one namespace of answer rule names, text rules and unit rules
ANSWER_RULES: dict[str, Rule | UnitRule] = {
    "strip_whitespace": strip_whitespace,
    "not_empty": _not_empty("answer"),
    "refusal": refusal,
    "answer_keywords": _keywords("answer", "answer_keywords"),
    "min_chars": min_chars,
    "repeated_opening": repeated_opening,
    **UNIT_RULES,
}
# the config's vocabulary (kun_hpc/config/kun.py, what a config may list) is exactly what is implemented here
for _names, _rules in ((INSTRUCTION_RULE_NAMES, INSTRUCTION_RULES), (ANSWER_RULE_NAMES, ANSWER_RULES)):
    if set(_names) != set(_rules):
        raise ImportError(f"rule names of kun_hpc.config {sorted(_names)} != the rules here {sorted(_rules)}")


def apply_rules(
    text: str,
    names: Sequence[str],
    rules: Mapping[str, Rule | UnitRule],
    p: RuleParams,
    unit: str | None = None,
) -> str | Drop:
    """Run the named rules in order: the cleaned text, or the first :class:`Drop`. A unit rule
    (:data:`UNIT_RULES`) also gets ``unit``; ValueError when one is named and ``unit`` is None."""
    for name in names:
        if name in UNIT_RULES:
            if unit is None:
                raise ValueError(f"rule {name!r} needs the unit (the record's text)")
            out = rules[name](text, unit, p)
        else:
            out = rules[name](text, p)
        if isinstance(out, Drop):
            return out
        text = out
    return text


class RuleSet:
    """The instruction and answer rules a config section names, ready to apply."""

    def __init__(self, section: Mapping[str, Any]):
        self.params = RuleParams.from_config(section)
        self.instruction_rules = list(section["instruction_rules"])
        self.answer_rules = list(section["answer_rules"])
        for names, known in ((self.instruction_rules, INSTRUCTION_RULES), (self.answer_rules, ANSWER_RULES)):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f"unknown rules {unknown}; known: {sorted(known)}")
        self.needs_unit = any(n in UNIT_RULES for n in self.answer_rules)

    def instruction(self, text: str) -> str | Drop:
        return apply_rules(text, self.instruction_rules, INSTRUCTION_RULES, self.params)

    def answer(self, text: str, unit: str | None = None) -> str | Drop:
        """The answer rules; ``unit`` (the record's text) is needed when :attr:`needs_unit`."""
        return apply_rules(text, self.answer_rules, ANSWER_RULES, self.params, unit)


class Rules(Stage):
    """The last per-shard stage: the instruction rules and the answer rules over each (instruction, answer)
    pair. The instruction rules ran already after Label (``label.apply_rules``); running them again costs
    nothing and covers instructions made elsewhere. A kept pair with a string ``text`` gets ``faithfulness``
    (the measure of its final answer against that text, :meth:`Faithfulness.as_dict`)."""

    name = "rules"

    def __init__(self, cfg, options=None):
        super().__init__(cfg, options)
        self.rules = RuleSet(self.options)

    def process(self, batch: list[dict]) -> list[dict | Rejected]:
        out: list[dict | Rejected] = []
        required = ("instruction", "answer", "text") if self.rules.needs_unit else ("instruction", "answer")
        for r in batch:
            missing = [k for k in required if not isinstance(r.get(k), str)]
            if missing:
                out.append(Rejected(r, "missing_field", ",".join(missing)))
                continue
            instruction = self.rules.instruction(r["instruction"])
            if isinstance(instruction, Drop):
                out.append(Rejected(r, instruction.reason, instruction.detail))
                continue
            unit = r["text"] if isinstance(r.get("text"), str) else None
            answer = self.rules.answer(r["answer"], unit)
            if isinstance(answer, Drop):
                out.append(Rejected(r, answer.reason, answer.detail))
                continue
            row = {**r, "instruction": instruction, "answer": answer}
            if unit is not None:
                row["faithfulness"] = measure(unit, answer, self.rules.params).as_dict()
            out.append(row)
        return out

    def chunk_stats(self, outputs: list[dict | Rejected]) -> dict:
        """What the report's "Tone and refusals" names: the matched phrases of the ``answer_refusal`` drops
        (``refusal_phrases``) and the words of the ``answer_keyword`` drops (``answer_keywords``), counted."""
        stats: dict[str, Counter[str]] = {"refusal_phrases": Counter(), "answer_keywords": Counter()}
        key = {"answer_refusal": "refusal_phrases", "answer_keyword": "answer_keywords"}
        for o in outputs:
            if isinstance(o, Rejected) and o.reason in key:
                stats[key[o.reason]][o.detail] += 1
        return {k: dict(v) for k, v in stats.items() if v}

    def provenance(self) -> dict:
        p = self.rules.params
        faithfulness = {
            "novel_ngram": p.novel_ngram,
            "drift_min_novel": p.drift_min_novel,
            "copy_min_recall": p.copy_min_recall,
            "copy_min_precision": p.copy_min_precision,
        }
        return {
            "instruction_rules": self.rules.instruction_rules,
            "answer_rules": self.rules.answer_rules,
            "faithfulness": faithfulness,
        }
