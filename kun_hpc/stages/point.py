"""Point: the Primary Chat model judges the *instruction only* as 【好】 or 【差】; the record gets
``verdict``.

``reference`` mode (Kun's rule) keeps a judgement holding the good tag and not the bad one. A judgement with
both tags is rejected as ``verdict_both``, one with neither as ``verdict_unparseable`` (Humpback saw 45% of
those: they are counted, never dropped silently), a bad one as ``verdict_bad``.

``calibrated`` mode generates nothing: it reads the log-probabilities of the good and bad tokens right after
the judgement's opening bracket (``verdict_open``), keeps ``score = P(good) / (P(good) + P(bad))`` (rounded to
6 decimals) and rejects a record below ``threshold`` as ``score_below_threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from kun_hpc.inference import Generation, Prompt
from kun_hpc.stages.base import Rejected
from kun_hpc.stages.llm import LLMStage, bad_generation, output_text

GOOD, BAD, BOTH, UNPARSEABLE = "good", "bad", "both", "unparseable"


def parse_verdict(text: str, good_tag: str = "【好】", bad_tag: str = "【差】") -> str:
    """``good`` (the good tag and not the bad one: Kun's keep rule), ``bad``, ``both`` or ``unparseable``."""
    has_good, has_bad = good_tag in text, bad_tag in text
    if has_good and has_bad:
        return BOTH
    return GOOD if has_good else BAD if has_bad else UNPARSEABLE


class Point(LLMStage):
    name = "point"
    needs = ("instruction",)

    def __init__(self, cfg, options=None):
        super().__init__(cfg, options)
        o = self.options
        self.mode = str(o.get("mode", "reference"))
        self.threshold = float(o.get("threshold", 0.5))
        self.good, self.bad = str(o.get("good", "好")), str(o.get("bad", "差"))
        self.open, self.close_ = str(o.get("verdict_open", "【")), str(o.get("verdict_close", "】"))
        self.tags = (self.open + self.good + self.close_, self.open + self.bad + self.close_)
        self.words = {GOOD: self.good, BAD: self.bad, BOTH: BOTH, UNPARSEABLE: UNPARSEABLE}
        self.candidates: list[int] = []

    def setup(self) -> None:
        super().setup()
        if self.mode == "calibrated":
            self.candidates = [self._verdict_token(w) for w in (self.good, self.bad)]

    def _verdict_token(self, word: str) -> int:
        """The token id of ``word`` right after a prompt + ``verdict_open``; refuses a tokenizer that would
        merge it with what comes before (the score would then read the wrong token)."""
        probe = self.template.prompt(instruction="测试") + self.open
        base, full = self.engine.encode([probe, probe + word])
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            raise ValueError(
                f"point (calibrated): {word!r} after {self.open!r} is not one token of its own with this "
                f"model's tokenizer; set point.verdict_open / point.good / point.bad so that it is"
            )
        return full[-1]

    def infer_stream(self, groups: Iterator[tuple[list[Prompt], list[int]]]) -> Iterator[list[Any]]:
        if self.mode != "calibrated":
            return super().infer_stream(groups)
        # one prefill step per prompt: nothing decodes, so nothing drains at a chunk's end; verdict_open is
        # configuration, so it joins the prompt as template text
        return (
            self.engine.next_token_logprobs([p + self.open for p in prompts], self.candidates)
            for prompts, _ in groups
        )

    def accept(self, record: dict, result: Any) -> dict | Rejected:
        if self.mode == "calibrated":
            return self._accept_score(record, result)
        g: Generation = result
        text = output_text(g)  # cleaned first: a zero-width space inside 【好】 does not hide the tag
        bad = bad_generation(g, self.reject_truncated, text)
        if bad:
            return Rejected(record, *bad)
        verdict = parse_verdict(text, *self.tags)
        row = {**record, "verdict": self.words[verdict]}
        if verdict == GOOD:
            return row
        return Rejected(row, f"verdict_{verdict}", text[:200])

    def _accept_score(self, record: dict, lps: list[float] | None) -> dict | Rejected:
        if lps is None:
            return Rejected(record, "prompt_too_long", "no room for the verdict token")
        good, bad = lps
        score = round(1.0 / (1.0 + math.exp(min(bad - good, 700.0))), 6)
        keep = score >= self.threshold
        row = {**record, "verdict": self.good if keep else self.bad, "score": score}
        if keep:
            return row
        return Rejected(row, "score_below_threshold", f"{score} < {self.threshold}")

    def provenance(self) -> dict:
        prov = {**super().provenance(), "mode": self.mode}
        if self.mode == "calibrated":
            prov["threshold"] = self.threshold
            prov.pop("sampling")  # nothing is sampled
        return prov
