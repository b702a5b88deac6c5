"""Answer (polishment): the Primary Chat model rewrites the raw text as an answer to the instruction; the
record gets ``answer``. The prompt must fit ``max_prompt_tokens`` (512 in Kun): the instruction is cut, by
tokens, so that it does; the record keeps the instruction as the model saw it. A text too long to leave room
for any of its instruction is rejected as ``prompt_too_long``."""

from __future__ import annotations

from kun_hpc.inference import Generation
from kun_hpc.stages.base import Rejected
from kun_hpc.stages.llm import LLMStage, bad_generation


class Answer(LLMStage):
    name = "answer"
    needs = ("text", "instruction")
    budget_in_prompt = True

    def prompt(self, record: dict) -> tuple[str, dict] | Rejected:
        text, instruction = record["text"], record["instruction"]
        full = self.template.render(text=text, instruction=instruction)
        budget = self.max_prompt_tokens
        if budget is None or self._tokens(full) <= budget:
            return full, {}
        if self._tokens(self.template.render(text=text, instruction="")) >= budget:
            return Rejected(record, "prompt_too_long", f"the text alone fills the {budget}-token prompt")
        cut = self.fit_instruction(text, instruction, budget)
        if not cut.strip():
            return Rejected(record, "prompt_too_long", f"no room for the instruction in {budget} tokens")
        return self.template.render(text=text, instruction=cut), {"instruction": cut}

    def fit_instruction(self, text: str, instruction: str, budget: int) -> str:
        """The longest token prefix of the instruction with which the prompt fits ``budget`` tokens (an
        incomplete character at the cut is dropped)."""
        tok = self.engine.tokenizer
        ids = tok(instruction, add_special_tokens=False)["input_ids"]

        def prefix(k: int) -> str:
            return tok.decode(ids[:k], clean_up_tokenization_spaces=False).rstrip("\ufffd")

        lo, hi = 0, len(ids)  # prefix(lo) fits; find the largest such lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._tokens(self.template.render(text=text, instruction=prefix(mid))) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return prefix(lo)

    def _tokens(self, prompt: str) -> int:
        return len(self.engine.encode([prompt])[0])

    def accept(self, record: dict, g: Generation) -> dict | Rejected:
        row = {**record, "answer": g.text}
        bad = bad_generation(g, self.reject_truncated)
        return Rejected(row, *bad) if bad else row

    def provenance(self) -> dict:
        return {**super().provenance(), "max_prompt_tokens": self.max_prompt_tokens}
