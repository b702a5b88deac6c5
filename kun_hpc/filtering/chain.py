"""The filter chain: raw documents in, units (kept, or rejected with a reason) out, cheapest steps first.

Per document: ``damaged_text`` when the text holds a U+FFFD, an unpaired surrogate or a noncharacter (issue
12: damage from an earlier bad decode is rejected here, where it enters, not blamed on a model later; the
whole document goes, since the bytes it was decoded from were not what its source declared) -> clean ->
``damaged_text`` again when cleaning made a U+FFFD (ftfy marks mojibake that lost bytes with one) ->
(``empty`` if nothing is left) -> segment into units of <= ``max_tokens`` tokens
(``too_long`` for a piece with no boundary left) -> cheap rules in order (``too_short``, ``low_cjk``,
``dup_lines``, ``dup_ngrams``) -> with an Answer budget, ``too_long`` for a unit whose Answer prompt would
leave too little room for its instruction -> perplexity, on the survivors only, batched over every document
of the call -> bucket, and ``ppl_<bucket>`` for the dropped buckets.

A unit record is its parent's record with ``id = <parent id>#<pos>``, ``parent``, ``pos`` (0-based, over
every unit the document was cut into, kept or rejected), ``text``, ``span`` (``[start, end)`` in the cleaned
parent text), ``tokens``, and with a scorer ``ppl`` and ``ppl_bucket``. Rejected units carry the same fields
as far as they got.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from kun_hpc.core.records import Rejected
from kun_hpc.filtering.buckets import Cutoffs
from kun_hpc.filtering.clean import Cleaner, find_damage
from kun_hpc.filtering.perplexity import Scorer, make_scorer
from kun_hpc.filtering.rules import build_rules, first_failure
from kun_hpc.filtering.segment import segment_texts
from kun_hpc.filtering.tokens import TokenCounter

Result = dict | Rejected


class FilterChain:
    """``fcfg`` is the ``filter`` config section (see :class:`kun_hpc.config.FilterConfig`); ``tokenizer``
    overrides ``fcfg.tokenizer`` (the stage passes the Label model's folder when that is None).

    ``budget`` (a :class:`kun_hpc.stages.answer.AnswerBudget`, when the run has an Answer stage): units are
    cut to at most ``min(fcfg.max_tokens, budget.unit_room())`` tokens, and a unit whose real Answer prompt
    still leaves less than the instruction's room is rejected here as ``too_long``, not after the GPU stages
    (issue 12, kind 7). Raises ValueError when that room is below ``fcfg.min_tokens``."""

    def __init__(
        self,
        fcfg: Any,
        cutoffs: Cutoffs | None = None,
        scorer: Scorer | None = None,
        tokenizer: str | None = None,
        budget: Any = None,
    ):
        self.fcfg = fcfg
        self.budget = budget
        self.max_tokens = int(fcfg.max_tokens) if budget is None else min(fcfg.max_tokens, budget.unit_room())
        if self.max_tokens < fcfg.min_tokens:
            raise ValueError(
                f"config key 'answer.instruction_tokens': the Answer prompt (answer.max_prompt_tokens "
                f"{budget.max_prompt_tokens}, its template, {budget.instruction_tokens} tokens for the "
                f"instruction) leaves {self.max_tokens} tokens to a unit, fewer than filter.min_tokens "
                f"{fcfg.min_tokens}"
            )
        c = fcfg.clean
        self.cleaner = Cleaner(c.fix_unicode, c.t2s, c.opencc_config)
        tokenizer = tokenizer or fcfg.tokenizer
        if not tokenizer:
            raise ValueError("filter: no tokenizer given (filter.tokenizer)")
        self.counter = TokenCounter(tokenizer)
        r = fcfg.rules
        self.rules = build_rules(
            fcfg.min_tokens, r.min_cjk_ratio, r.max_dup_line_frac, r.dup_ngram_n, r.max_dup_ngram_frac
        )
        self.scorer = scorer
        self.cutoffs = cutoffs
        self.drop = set(fcfg.perplexity.drop)
        self.timings: Counter[str] = Counter()  # seconds per step, for benchmarks

    def load_scorer(self) -> Scorer | None:
        if self.scorer is None:
            self.scorer = make_scorer(self.fcfg.perplexity)
        return self.scorer

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None

    def info(self) -> dict:
        return {
            **self.counter.info(),
            "max_tokens": self.max_tokens,
            **({"answer_budget": self._budget_info()} if self.budget is not None else {}),
            "clean": self.cleaner.info(),
            "rules": [{"name": r.name, **r.info()} for r in self.rules],
            **({"perplexity": self.scorer.info()} if self.scorer is not None else {}),
            **({"cutoffs": self.cutoffs.to_dict()} if self.cutoffs is not None else {}),
        }

    def _budget_info(self) -> dict:
        b = self.budget
        return {"max_prompt_tokens": b.max_prompt_tokens, "instruction_tokens": b.instruction_tokens}

    # ------------------------------------------------------------------------------------------ steps
    def cheap(self, docs: list[dict]) -> list[list[Result]]:
        """Clean, segment and apply the cheap rules: per document, its units (kept ones have no ``ppl``)."""
        t0 = time.perf_counter()
        damaged: list[str | None] = [None] * len(docs)
        cleaned: list[str] = []
        for i, d in enumerate(docs):
            text = d.get("text")
            if not isinstance(text, str):
                cleaned.append("")
                continue
            damage = find_damage(text)
            if damage is None:
                text = self.cleaner(text)
                damage = find_damage(text)
                where = "cleaned text"
            else:
                where = "text"
            if damage is not None:
                damaged[i] = damage.describe(where)
                text = ""  # nothing to segment
            cleaned.append(text)
        t1 = time.perf_counter()
        segments = segment_texts(cleaned, self.max_tokens, self.counter.count)
        t2 = time.perf_counter()
        out: list[list[Result]] = []
        for doc, text, segs, damage in zip(docs, cleaned, segments, damaged, strict=True):
            if damage is not None:
                out.append([Rejected(doc, "damaged_text", damage)])
                continue
            if not segs:
                why = "no text left after cleaning" if isinstance(doc.get("text"), str) else "no text field"
                out.append([Rejected(doc, "empty", why)])
                continue
            pid = doc.get("id")
            rest = {k: v for k, v in doc.items() if k not in ("id", "text")}
            units: list[Result] = []
            for pos, seg in enumerate(segs):
                unit = {
                    "id": f"{pid}#{pos}",
                    "parent": pid,
                    "pos": pos,
                    **rest,
                    "text": text[seg.start : seg.end],
                    "span": [seg.start, seg.end],
                    "tokens": seg.tokens,
                }
                if seg.too_long:
                    detail = f"{seg.tokens} tokens > {self.max_tokens} and no boundary left to cut at"
                    units.append(Rejected(unit, "too_long", detail))
                    continue
                failed = first_failure(self.rules, unit)
                units.append(unit if failed is None else Rejected(unit, *failed))
            out.append(units)
        if self.budget is not None:
            self._check_budget(out)
        t3 = time.perf_counter()
        self.timings.update({"clean": t1 - t0, "segment": t2 - t1, "rules": t3 - t2})
        return out

    def _check_budget(self, out: list[list[Result]]) -> None:
        """Reject as ``too_long`` the kept units whose Answer prompt leaves too little to the instruction."""
        kept = [
            (d, k) for d, units in enumerate(out) for k, u in enumerate(units) if not isinstance(u, Rejected)
        ]
        why = self.budget.units_too_long([out[d][k]["text"] for d, k in kept])  # type: ignore[index]
        for (d, k), detail in zip(kept, why, strict=True):
            if detail is not None:
                out[d][k] = Rejected(out[d][k], "too_long", detail)  # type: ignore[arg-type]

    def process(self, docs: list[dict]) -> list[list[Result]]:
        """The whole chain: :meth:`cheap`, then perplexity and buckets on the surviving units."""
        out = self.cheap(docs)
        if self.scorer is None:
            return out
        t0 = time.perf_counter()
        where = [(i, j) for i, units in enumerate(out) for j, u in enumerate(units) if type(u) is dict]
        scores = self.scorer.score([out[i][j]["text"] for i, j in where])  # type: ignore[index]
        for (i, j), ppl in zip(where, scores, strict=True):
            unit: dict = out[i][j]  # type: ignore[assignment]
            unit["ppl"] = ppl
            if self.cutoffs is None:
                continue
            bucket = self.cutoffs.bucket(ppl)
            unit["ppl_bucket"] = bucket
            if bucket in self.drop:
                out[i][j] = Rejected(unit, f"ppl_{bucket}", f"ppl {ppl:.3f} in the {bucket} bucket")
        self.timings["perplexity"] += time.perf_counter() - t0
        return out
