"""Point: the Primary Chat model judges the *instruction only* as 【好】 or 【差】; the record gets
``verdict``.

``reference`` mode (Kun's rule) keeps a judgement holding the good tag and not the bad one. A judgement with
both tags is rejected as ``verdict_both``, one with neither as ``verdict_unparseable`` (Humpback saw 45% of
those: they are counted, never dropped silently), a bad one as ``verdict_bad``.

``point.stop_at_verdict`` (reference mode; default off, as the reference) ends a judgement at its first
complete tag: both tags (``verdict_open + good/bad + verdict_close``) join the stop strings, and the tag that
ended the generation is put back at the end of the text (:attr:`Generation.stop_string`: what vLLM's
``include_stop_str_in_output`` gives, on both engines). The keep rule is unchanged, but what it sees is not:
with the option a judgement can never hold both tags, so the *first* tag decides and ``verdict_both`` never
occurs, where the reference generates on (up to ``max_new_tokens``) and rejects a judgement that names both.
A judgement whose first tag is 【好】 and that would later have written 【差】 is therefore kept with the
option and rejected without it; every other judgement gets the same verdict. Tags are matched on the raw text
(a tag split by a control character is found by :func:`parse_verdict` after cleaning, not by the stop).
The option is in the point section, so in the stage's config hash, and in each record's ``prov.point``.

``calibrated`` mode generates nothing: it reads the log-probabilities of the good and bad tokens right after
the judgement's opening bracket (``verdict_open``), keeps ``score = P(good) / (P(good) + P(bad))`` (rounded to
6 decimals) and rejects a record below ``threshold`` as ``score_below_threshold``.

Judge health (issue 14): in reference mode every record the model generated a judgement for, kept or
rejected, gets ``judge_tokens`` (tokens generated, an ending EOS included, as the engines count them) and
``judge_truncated`` (true when the judgement hit ``max_new_tokens`` or ``max_model_len``: finish reason
``length``). :meth:`Point.chunk_stats` sums, per corpus, the outcome of every record, the exact histogram of
``judge_tokens`` and the truncated count, or in calibrated mode the scores of all scored records in
:data:`SCORE_BINS` bins; kun_hpc/quality/judge.py turns them into the report's "Judge health" section.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

from kun_hpc.core.records import Rejected
from kun_hpc.inference import FINISH_LENGTH, FINISH_PROMPT_TOO_LONG, Generation, Prompt
from kun_hpc.stages.llm import LLMStage, bad_generation, output_text

GOOD, BAD, BOTH, UNPARSEABLE = "good", "bad", "both", "unparseable"
JUDGE_TOKENS = "judge_tokens"  # record field: tokens generated for the judgement (reference mode)
JUDGE_TRUNCATED = "judge_truncated"  # record field: the judgement hit max_new_tokens (finish reason length)
# a rejection's outcome in the stats: the verdict it stands for; other reasons (prompt_too_long,
# empty_output, invalid_utf8, output_too_long, missing_field, damaged_text) count under their own name
OUTCOMES = {
    "verdict_bad": BAD,
    "verdict_both": BOTH,
    "verdict_unparseable": UNPARSEABLE,
    "score_below_threshold": BAD,
}
SCORE_BINS = 100  # calibrated scores in bins of width 1/100 on [0, 1]
NO_CORPUS = "(no corpus)"  # the stats key of a record without a ``corpus`` field


def score_bin(score: float) -> int:
    """The bin of a calibrated score in [0, 1]: bin ``i`` holds ``[i/100, (i+1)/100)``, the last one also 1.0.
    Exact for scores of at most 6 decimals (Point rounds to 6): no float edge puts 0.29 in bin 28."""
    return min(round(score * 1_000_000) // (1_000_000 // SCORE_BINS), SCORE_BINS - 1)


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
        self.stop_at_verdict = bool(o.get("stop_at_verdict", False)) and self.mode != "calibrated"
        if self.stop_at_verdict:
            stops = [*self.sampling.stop, *(t for t in self.tags if t not in self.sampling.stop)]
            self.sampling = dataclasses.replace(self.sampling, stop=stops)
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
        if g.finish_reason == FINISH_PROMPT_TOO_LONG:  # nothing generated: no judgement
            return Rejected(record, *bad_generation(g, self.reject_truncated))
        if g.stop_string in self.tags:  # stop_at_verdict: the tag that ended the judgement is part of it
            g = dataclasses.replace(g, text=g.text + g.stop_string)
        row = {**record, JUDGE_TOKENS: len(g.token_ids), JUDGE_TRUNCATED: g.finish_reason == FINISH_LENGTH}
        text = output_text(g)  # cleaned first: a zero-width space inside 【好】 does not hide the tag
        bad = bad_generation(g, self.reject_truncated, text)
        if bad:
            return Rejected(row, *bad)
        verdict = parse_verdict(text, *self.tags)
        row["verdict"] = self.words[verdict]
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

    def chunk_stats(self, outputs: list[dict | Rejected]) -> dict:
        """Judge health of one chunk, ``{"judge": {corpus: {...}}}``, summed over chunks, shards and units
        (:func:`~kun_hpc.core.counts.add_stats`). Per corpus (a record's ``corpus``, else
        :data:`NO_CORPUS`):

        * ``outcomes``: every output counted once: ``good`` (kept), ``bad`` (``verdict_bad``, or calibrated
          ``score_below_threshold``), ``both``, ``unparseable``, or the reject reason itself
          (``prompt_too_long``, ``empty_output``, ``invalid_utf8``, ``output_too_long``, ``missing_field``,
          ``damaged_text``); the values add up to the records the stage read;
        * reference mode, over the records with a judgement (``judge_tokens``): ``tokens``, the exact
          histogram ``{str(tokens generated): judgements}``, and ``truncated``, how many hit
          ``max_new_tokens`` (``judge_truncated``);
        * calibrated mode, over the scored records (kept or ``score_below_threshold``): ``scores``,
          ``{str(score_bin(score)): records}`` (:func:`score_bin`, :data:`SCORE_BINS` bins on [0, 1]).
        """
        per: dict[str, dict[str, Counter]] = {}
        truncated: Counter[str] = Counter()
        for o in outputs:
            rejected = isinstance(o, Rejected)
            r = o.record if rejected else o
            corpus = str(r.get("corpus") or NO_CORPUS)
            c = per.setdefault(corpus, {"outcomes": Counter(), "tokens": Counter(), "scores": Counter()})
            outcome = OUTCOMES.get(o.reason, o.reason) if rejected else GOOD
            c["outcomes"][outcome] += 1
            if self.mode == "calibrated":
                if outcome in (GOOD, BAD):
                    c["scores"][str(score_bin(r["score"]))] += 1
            elif JUDGE_TOKENS in r:
                c["tokens"][str(r[JUDGE_TOKENS])] += 1
                truncated[corpus] += bool(r[JUDGE_TRUNCATED])
        judge = {}
        for corpus, c in per.items():
            judge[corpus] = {k: dict(v) for k, v in c.items() if v}
            if c["tokens"]:
                judge[corpus]["truncated"] = truncated[corpus]
        return {"judge": judge} if judge else {}

    def provenance(self) -> dict:
        prov = {**super().provenance(), "mode": self.mode}
        if self.mode == "calibrated":
            prov["threshold"] = self.threshold
            prov.pop("sampling")  # nothing is sampled
        else:
            prov["stop_at_verdict"] = self.stop_at_verdict
        return prov
